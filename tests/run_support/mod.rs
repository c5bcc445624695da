//! Shared helpers of the `run_*` end-to-end tests: a project directory, its
//! own store and temp dir, and the JSON event lines of `kiln run --json`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Project {
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
    pub tmp: PathBuf,
}

pub struct Run {
    pub code: i32,
    pub events: Vec<Value>,
    pub stderr: String,
}

impl Project {
    /// A project whose manifest is `build.kiln` with `manifest`.
    pub fn new(manifest: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(dir.path().join("project")).unwrap();
        std::fs::create_dir_all(&tmp).unwrap();
        let project = Project { dir, store, tmp };
        project.write("build.kiln", manifest);
        project
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("project")
    }

    pub fn write(&self, path: &str, text: &str) {
        let path = self.root().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    pub fn kiln(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
        command
            .current_dir(self.root())
            .env("TMPDIR", &self.tmp)
            .arg("--store")
            .arg(&self.store);
        command
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let output = self
            .kiln()
            .arg("run")
            .arg("--json")
            .args(args)
            .output()
            .unwrap();
        parse(output)
    }

    /// Nothing left in the temp dir the builds used.
    pub fn assert_clean(&self) {
        let left: Vec<_> = std::fs::read_dir(&self.tmp)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "temp dirs left behind: {left:?}");
        // Build directories live under the store; none outlives its build.
        let scratch: Vec<_> = std::fs::read_dir(self.store.join("scratch"))
            .map(|dir| dir.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        assert!(scratch.is_empty(), "build dirs left behind: {scratch:?}");
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let prefix = self.dir.path().to_string_lossy().to_string();
        assert!(
            !mountinfo.contains(&prefix),
            "mounts left under {prefix}:\n{mountinfo}"
        );
    }
}

pub fn parse(output: Output) -> Run {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let events = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .map(|envelope| envelope["event"].clone())
        .collect();
    Run {
        code: output.status.code().unwrap_or(-1),
        events,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

impl Run {
    /// The terminal status of `job`: `passed`, `failed`, `cached`, ...
    pub fn status(&self, job: &str) -> String {
        self.events
            .iter()
            .rev()
            .find(|e| {
                e["job"] == job
                    && matches!(
                        e["type"].as_str(),
                        Some("job/end" | "job/cached" | "job/skipped")
                    )
            })
            .map(|e| match e["type"].as_str() {
                Some("job/cached") => "cached".to_owned(),
                Some("job/skipped") => "skipped".to_owned(),
                _ => e["status"].as_str().unwrap_or("?").to_owned(),
            })
            .unwrap_or_else(|| panic!("no end for job {job}: {:#?}\n{}", self.events, self.stderr))
    }

    pub fn build_status(&self) -> String {
        self.events
            .iter()
            .rev()
            .find(|e| e["type"] == "build/end")
            .and_then(|e| e["status"].as_str())
            .unwrap_or("none")
            .to_owned()
    }

    /// `artifact name → object digest`.
    pub fn artifacts(&self) -> Vec<(String, String)> {
        self.events
            .iter()
            .filter(|e| e["type"] == "artifact/saved")
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_owned(),
                    e["object"]["digest"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    pub fn of_type(&self, kind: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["type"] == kind).collect()
    }

    pub fn describe(&self) -> String {
        format!("exit {}\n{}\n{:#?}", self.code, self.stderr, self.events)
    }
}

/// Restores a store object into `target`.
pub fn restore(store: &Path, digest: &str, target: &Path) {
    let status = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--store")
        .arg(store)
        .args(["store", "restore", digest])
        .arg(target)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Copies a directory tree (an example project into a test's own dir).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A `kiln run --json` in the background whose stdout lines (envelopes) are
/// read as they come.
pub struct Background {
    pub child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Background {
    pub fn start(project: &Project, args: &[&str]) -> Background {
        let mut child = project
            .kiln()
            .arg("run")
            .arg("--json")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Background {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (at most 60 s) for an event `kind` about `job`; returns it.
    pub fn wait_for(&mut self, kind: &str, job: &str) -> Value {
        let matching = |line: &str| {
            let value: Value = serde_json::from_str(line).unwrap_or_default();
            let event = value["event"].clone();
            (event["type"] == kind && event["job"] == job).then_some(event)
        };
        if let Some(found) = self.seen.iter().find_map(|line| matching(line)) {
            return found;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    let found = matching(&line);
                    self.seen.push(line);
                    if let Some(found) = found {
                        return found;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => break,
            }
        }
        panic!("no {kind} event for {job}; lines so far: {:#?}", self.seen);
    }

    /// Waits for the build to end: its exit code, every stdout line (one
    /// envelope each) and its stderr.
    pub fn finish(mut self) -> (i32, Vec<String>, String) {
        let status = self.child.wait().unwrap();
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
        }
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        (status.code().unwrap_or(-1), self.seen, stderr)
    }
}

/// The events of envelope lines.
pub fn events_of(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .map(|envelope| envelope["event"].clone())
        .collect()
}

/// Processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Processes below `pid`, at any depth (the build process and what it runs).
pub fn descendants_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack = vec![pid];
    while let Some(parent) = stack.pop() {
        for child in children_of(parent) {
            out.push(child);
            stack.push(child);
        }
    }
    out
}

/// Running (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z "))
}

pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}
