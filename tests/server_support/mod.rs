//! A real `kiln serve` on loopback for the server and web tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use kiln::controller::{ControllerClient, Endpoint};
use serde_json::Value;

#[path = "../run_support/mod.rs"]
mod run_support;
#[allow(unused_imports)]
pub use run_support::{copy_dir, wait_until};

pub const KILN: &str = env!("CARGO_BIN_EXE_kiln");
pub const HELLO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello");

pub struct Server {
    pub child: Child,
    pub url: String,
    pub store: PathBuf,
    pub dir: tempfile::TempDir,
    pub admin: String,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let admin = token(&store, "admin", "admin");
        let mut server = Server {
            child: spawn(&store, extra),
            url: String::new(),
            store,
            dir,
            admin,
        };
        server.url = listening(&mut server.child);
        server
    }

    /// Stops it hard (SIGKILL) and starts it again on the same store.
    pub fn restart_after_crash(&mut self, extra: &[&str]) {
        self.child.kill().unwrap();
        let _ = self.child.wait();
        self.child = spawn(&self.store, extra);
        self.url = listening(&mut self.child);
    }

    pub fn token(&self, name: &str, role: &str) -> String {
        token(&self.store, name, role)
    }

    pub fn request(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Bytes) {
        let client = ControllerClient::new(
            Endpoint::parse(&self.url).unwrap(),
            token.unwrap_or("").to_owned(),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut connection = client.connect().await.unwrap();
            connection
                .request(method, path, Bytes::from(body))
                .await
                .unwrap()
        })
    }

    pub fn get(&self, path: &str) -> Value {
        let (status, body) = self.request(Some(&self.admin), Method::GET, path, Vec::new());
        assert_eq!(
            status,
            StatusCode::OK,
            "GET {path}: {}",
            String::from_utf8_lossy(&body)
        );
        serde_json::from_slice(&body).unwrap()
    }

    pub fn post(&self, path: &str) -> (StatusCode, Value) {
        let (status, body) = self.request(Some(&self.admin), Method::POST, path, Vec::new());
        (status, serde_json::from_slice(&body).unwrap_or_default())
    }

    /// Submits `archive`; the status and answer.
    pub fn submit(&self, archive: Vec<u8>, query: &str) -> (StatusCode, Value) {
        let (status, body) = self.request(
            Some(&self.admin),
            Method::POST,
            &format!("/api/builds?{query}"),
            archive,
        );
        (status, serde_json::from_slice(&body).unwrap_or_default())
    }

    pub fn wait_finished(&self, build: i64) -> Value {
        let mut record = Value::Null;
        wait_until(
            &format!("build {build} to finish"),
            Duration::from_secs(120),
            || {
                record = self.get(&format!("/api/builds/{build}"));
                !matches!(record["status"].as_str(), Some("queued" | "running"))
            },
        );
        record
    }

    pub fn kiln(&self) -> Command {
        let mut command = Command::new(KILN);
        command
            .env("KILN_SERVER", &self.url)
            .env("KILN_TOKEN", &self.admin)
            .env("TMPDIR", self.dir.path());
        command
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn(store: &Path, extra: &[&str]) -> Child {
    Command::new(KILN)
        .arg("--store")
        .arg(store)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Reads `listening on http://ADDR` from the server's stderr (and keeps
/// draining it so the server never blocks on a full pipe).
pub fn listening(child: &mut Child) -> String {
    let stderr = child.stderr.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = line.strip_prefix("kiln serve: listening on ") {
                let _ = sender.send(url.to_owned());
            }
        }
    });
    receiver
        .recv_timeout(Duration::from_secs(30))
        .expect("the server said where it listens")
}

pub fn token(store: &Path, name: &str, role: &str) -> String {
    let output = Command::new(KILN)
        .arg("--store")
        .arg(store)
        .args(["serve", "token", "create", name, "--role", role])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// A tar of `dir`'s files.
pub fn tar_of(dir: &Path) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", dir).unwrap();
    builder.into_inner().unwrap()
}

pub fn project(manifest: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("build.kiln"), manifest).unwrap();
    dir
}

pub fn statuses(record: &Value) -> Vec<(String, String)> {
    record["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| {
            (
                job["job"].as_str().unwrap().to_owned(),
                job["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}
