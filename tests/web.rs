//! The web page of `kiln serve` in a real browser (issue 13): Debian's
//! headless Chromium, driven over the Chrome DevTools Protocol, against a
//! real server on loopback. Screenshots of each page go to
//! `target/tmp/web-*.png`.

#[path = "server_support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{KILN, Server, project, tar_of, wait_until};

const CHROMIUM: &str = "/usr/bin/chromium";

/// One headless Chromium with one page, spoken to over its DevTools socket.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    socket: tungstenite::WebSocket<TcpStream>,
    next: u64,
}

impl Browser {
    fn start() -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium"
        );
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
                "--window-size=1280,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let active = profile.path().join("DevToolsActivePort");
        wait_until("Chromium's DevTools port", Duration::from_secs(30), || {
            std::fs::read_to_string(&active).is_ok_and(|text| text.lines().count() >= 2)
        });
        let port: u16 = std::fs::read_to_string(&active)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        // The page target's socket, from the DevTools HTTP listing.
        let mut page = None;
        wait_until("a page target", Duration::from_secs(10), || {
            let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
                return false;
            };
            // DevTools answers only a Host of an IP address with the port.
            let _ = write!(
                stream,
                "GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
            );
            // It keeps the connection open: read the headers, then exactly
            // Content-Length bytes.
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut answer = Vec::new();
            let mut buffer = [0u8; 4096];
            let body = loop {
                let Ok(n) = stream.read(&mut buffer) else {
                    break None;
                };
                if n == 0 {
                    break None;
                }
                answer.extend_from_slice(&buffer[..n]);
                let text = String::from_utf8_lossy(&answer).into_owned();
                let Some((head, body)) = text.split_once("\r\n\r\n") else {
                    continue;
                };
                let length: usize = head
                    .lines()
                    .find_map(|line| {
                        line.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_owned())
                    })
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if body.len() >= length {
                    break Some(body.to_owned());
                }
            };
            let targets: Value =
                serde_json::from_str(&body.unwrap_or_default()).unwrap_or_default();
            page = targets
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned));
            page.is_some()
        });
        let url = page.unwrap();
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (socket, _) = tungstenite::client(url.as_str(), stream).unwrap();
        let mut browser = Browser {
            child,
            _profile: profile,
            socket,
            next: 0,
        };
        browser.call("Page.enable", json!({}));
        browser.call("Runtime.enable", json!({}));
        browser
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let message = json!({"id": id, "method": method, "params": params});
        self.socket
            .send(tungstenite::Message::text(message.to_string()))
            .unwrap();
        loop {
            let tungstenite::Message::Text(text) = self.socket.read().unwrap() else {
                continue;
            };
            let answer: Value = serde_json::from_str(text.as_str()).unwrap();
            if answer["id"] == id {
                assert!(answer["error"].is_null(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page (promises awaited), by value.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
        );
        assert!(
            result["exceptionDetails"].is_null(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
        self.wait("the page to load", "document.readyState === 'complete'");
    }

    /// Waits (20 s at most) until `expression` is true in the page.
    fn wait(&mut self, what: &str, expression: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            // The page may be between two documents: an error is "not yet".
            let probe = format!(
                "(() => {{ try {{ return !!({expression}); }} catch (_) {{ return false; }} }})()"
            );
            if self.eval(&probe) == true {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out waiting for {what} ({expression}); the page says: {}",
            self.eval("document.body.innerText")
        );
    }

    fn screenshot(&mut self, name: &str) -> PathBuf {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let bytes = base64_decode(shot["data"].as_str().unwrap());
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("web-{name}.png"));
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

/// Logs in through the form as a person would.
fn log_in(browser: &mut Browser, server: &Server, token: &str) {
    browser.goto(&format!("{}/", server.url));
    browser.wait("the login form", "location.pathname === '/login'");
    browser.eval(&format!(
        "document.querySelector('#token').value = {}; document.querySelector('form').submit(); true",
        json!(token)
    ));
    browser.wait(
        "the builds page",
        "document.querySelector('#who')?.textContent.includes('·')",
    );
}

/// Log in; a build submitted through the API appears in the list without a
/// reload and its log lines appear live on its page; the Kill button ends
/// it Killed. Control: a wrong token stays on the form.
#[test]
fn log_in_watch_a_build_live_and_kill_it_from_the_page() {
    let server = Server::start(&[]);
    let mut browser = Browser::start();
    browser.goto(&format!("{}/login", server.url));
    browser.eval("document.querySelector('#token').value = 'kiln_wrong'; document.querySelector('form').submit(); true");
    browser.wait(
        "the refusal",
        "location.search.includes('failed') && !document.querySelector('#failed').hidden",
    );
    browser.screenshot("login");
    log_in(&mut browser, &server, &server.admin);
    browser.wait("the list", "document.querySelector('.list')");
    let dir = project(
        r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "one" ];
  jobs = { talk = { stage = "one"; commands = [ "for i in $(seq 1 600); do echo line $i; sleep 0.1; done" ]; }; };
}"#,
    );
    let (_, answer) = server.submit(tar_of(dir.path()), "project=live");
    let build = answer["build"].as_i64().unwrap();
    browser.wait(
        "the new build in the list, live",
        &format!(
            "[...document.querySelectorAll('.row')].some(r => r.textContent.includes('#{build}'))"
        ),
    );
    browser.screenshot("builds");
    browser.eval(&format!("location.hash = '#/builds/{build}'; true"));
    browser.wait("the job", "document.querySelector('.job')");
    browser.wait(
        "the job running",
        "document.querySelector('.job')?.textContent.includes('running')",
    );
    browser.eval("document.querySelector('.job').click(); true");
    browser.wait(
        "live log lines",
        "document.querySelector('.log').textContent.includes('line 5')",
    );
    let before = browser.eval("document.querySelectorAll('.log > div').length");
    browser.wait(
        "more lines as they come",
        &format!("document.querySelectorAll('.log > div').length > {before} + 3"),
    );
    browser.screenshot("build-running");
    browser.eval("[...document.querySelectorAll('button')].find(b => b.textContent === 'Kill').click(); true");
    browser.wait(
        "Killed",
        "document.querySelector('h1 .status')?.textContent === 'killed'",
    );
    assert_eq!(server.wait_finished(build)["status"], "killed");
    browser.screenshot("build-killed");
}

/// Untrusted text stays text: a log line of HTML and an artifact name with
/// markup create no element and run no script. An artifact downloaded from
/// the page has the bytes `kiln artifacts get` writes.
#[test]
fn hostile_text_renders_as_text_and_downloads_match_the_cli() {
    let server = Server::start(&[]);
    let dir = project(
        r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "one" ];
  jobs = { make = {
    stage = "one";
    commands = [
      "echo '<img src=x onerror=window.__pwned=1><script>window.__pwned=2</script><b>bold?</b>'"
      "printf '\\033[31mred\\033[0m\\n'"
      "head -c 100000 /dev/urandom > data.bin"
    ];
    artifacts = [ "data.bin => <b>x</b>.bin" ];
  }; };
}"#,
    );
    let (status, answer) = server.submit(tar_of(dir.path()), "");
    assert!(status.is_success(), "{answer}");
    let build = answer["build"].as_i64().unwrap();
    assert_eq!(server.wait_finished(build)["status"], "passed");
    let mut browser = Browser::start();
    log_in(&mut browser, &server, &server.admin);
    browser.eval(&format!("location.hash = '#/builds/{build}'; true"));
    browser.wait("the job", "document.querySelector('.job')");
    browser.eval("document.querySelector('.job').click(); true");
    browser.wait(
        "the log",
        "document.querySelector('.log').textContent.includes('bold?')",
    );
    assert_eq!(
        browser.eval("document.querySelectorAll('.log img, .log script, .log b').length"),
        0
    );
    assert_eq!(browser.eval("typeof window.__pwned"), "undefined");
    assert_eq!(
        browser.eval("document.querySelector('.log').textContent.includes('<img src=x onerror=window.__pwned=1>')"),
        true,
        "the markup is shown as text"
    );
    assert_eq!(
        browser.eval("!!document.querySelector('.log .a-fg-31')"),
        true,
        "ANSI colours are rendered"
    );
    assert_eq!(
        browser.eval("document.querySelectorAll('.artifacts b').length"),
        0
    );
    assert_eq!(
        browser.eval("document.querySelector('.artifacts a').textContent"),
        "<b>x</b>.bin"
    );
    browser.screenshot("build-hostile");
    // The download, fetched by the page with its session.
    let downloaded = browser.eval(
        "fetch(document.querySelector('.artifacts a').href).then(r => r.arrayBuffer()).then(b => { \
           let s = ''; for (const x of new Uint8Array(b)) s += String.fromCharCode(x); return btoa(s); })",
    );
    let downloaded = base64_decode(downloaded.as_str().unwrap());
    let cli = server.dir.path().join("cli.bin");
    let got = Command::new(KILN)
        .arg("--store")
        .arg(&server.store)
        .args(["artifacts", "get", &build.to_string(), "<b>x</b>.bin", "-o"])
        .arg(&cli)
        .output()
        .unwrap();
    assert!(got.status.success(), "{got:?}");
    assert_eq!(downloaded.len(), 100_000);
    assert_eq!(downloaded, std::fs::read(&cli).unwrap());
    // The store page.
    browser.eval("location.hash = '#/store'; true");
    browser.wait(
        "the store page",
        "document.body.innerText.includes('Pinned builds')",
    );
    browser.screenshot("store");
}
