//! Shared by the `offline_*` tests: a real `git daemon` on loopback serving
//! a bare repository that the test can push new commits to.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct GitServer {
    pub base: tempfile::TempDir,
    pub port: u16,
    daemon: Child,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=kiln", "-c", "user.email=kiln@example.org"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl GitServer {
    /// Serves `lib.git` (branch `main`, HEAD → main, one commit with
    /// `lib.txt` = "one\n") over `git://127.0.0.1:PORT/`.
    pub fn start() -> GitServer {
        let base = tempfile::tempdir().unwrap();
        let bare = base.path().join("lib.git");
        let work = base.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        git(
            base.path(),
            &["init", "-q", "--bare", "-b", "main", "lib.git"],
        );
        git(&work, &["init", "-q", "-b", "main"]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        let port = free_port();
        let daemon = Command::new("git")
            .args([
                "daemon",
                "--export-all",
                "--reuseaddr",
                "--listen=127.0.0.1",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.path().display()))
            .arg(base.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = GitServer { base, port, daemon };
        server.commit("lib.txt", "one\n");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "git daemon did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    pub fn url(&self) -> String {
        format!("git://127.0.0.1:{}/lib.git", self.port)
    }

    /// Commits `path` = `text` on main and pushes it; returns the commit.
    pub fn commit(&self, path: &str, text: &str) -> String {
        let work = self.work();
        std::fs::write(work.join(path), text).unwrap();
        git(&work, &["add", "."]);
        git(&work, &["commit", "-q", "-m", path]);
        git(&work, &["push", "-q", "origin", "main"]);
        git(&work, &["rev-parse", "HEAD"])
    }

    /// Tags the current commit and pushes the tag.
    pub fn tag(&self, name: &str) {
        let work = self.work();
        git(&work, &["tag", name]);
        git(&work, &["push", "-q", "origin", name]);
    }

    pub fn head(&self) -> String {
        git(&self.work(), &["rev-parse", "HEAD"])
    }

    fn work(&self) -> PathBuf {
        self.base.path().join("work")
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// A manifest on the host image with the repository as a source at `lib`
/// (plus `extra` inside the source attrset, e.g. `ref = "main";`) and the
/// project directory itself.
pub fn manifest(url: &str, extra: &str) -> String {
    format!(
        r#"{{
  driver = {{ type = "container"; image = "host"; }};
  sources = [ ./. {{ url = "{url}"; {extra} }} ];
  stages = [ "build" "package" ];
  jobs = {{
    compile = {{ stage = "build"; commands = [ "cat lib/lib.txt input.txt > joined.txt" ]; }};
    package = {{ stage = "package"; commands = [ "tr a-z A-Z < joined.txt > upper.txt" ]; artifacts = [ "upper.txt" ]; }};
  }};
}}"#
    )
}
