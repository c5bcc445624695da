//! Shared helpers of the `run_*` end-to-end tests: a project directory, its
//! own store and temp dir, and the JSON event lines of `kiln run --json`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
