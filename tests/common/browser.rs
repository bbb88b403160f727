//! A real headless Chromium (Debian's `chromium`) driven over the DevTools protocol: open a
//! page, evaluate script in it, take a screenshot. Killed and its profile removed on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub struct Browser {
    child: Child,
    page: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    profile: PathBuf,
}

/// `GET path` on 127.0.0.1:`port`, body as JSON.
fn get_json(port: u16, path: &str) -> Option<Value> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    // DevTools keeps the connection open: read up to the body's announced length.
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        answer.extend_from_slice(&chunk[..n]);
        let Some(at) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&answer[..at]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())?;
        if answer.len() >= at + 4 + length {
            return serde_json::from_slice(&answer[at + 4..at + 4 + length]).ok();
        }
    }
}

impl Browser {
    /// Starts Chromium headless on `url` with a window of `width`×`height`, and attaches to
    /// the page. Panics (the test fails) when Chromium is missing or does not come up.
    pub fn open(url: &str, width: u32, height: u32) -> Browser {
        let profile = std::env::temp_dir().join(format!(
            "repram-chromium-{}-{:08x}",
            std::process::id(),
            rand_u32()
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("profile dir");
        let child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--disable-gpu",
                "--disable-quic",
                "--disable-sync",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("--window-size={width},{height}"))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium (Debian's `chromium` package; .ci/run installs it)");
        let mut browser = Browser {
            child,
            page: Self::attach(&profile),
            next_id: 0,
            profile,
        };
        browser.call("Runtime.enable", json!({}));
        // Attached early, the page may still be loading (or be the blank one before it).
        let deadline = Instant::now() + Duration::from_secs(30);
        let loaded = format!(
            "location.href === {} && document.readyState === 'complete'",
            json!(url)
        );
        while browser.eval(&loaded) != json!(true) {
            assert!(Instant::now() < deadline, "{url} did not load");
            std::thread::sleep(Duration::from_millis(50));
        }
        browser
    }

    /// Finds the DevTools port Chromium wrote into its profile, then the page's socket.
    fn attach(profile: &Path) -> WebSocket<MaybeTlsStream<TcpStream>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                Instant::now() < deadline,
                "chromium did not open its DevTools port"
            );
            let port = std::fs::read_to_string(profile.join("DevToolsActivePort"))
                .ok()
                .and_then(|text| {
                    text.lines()
                        .next()
                        .and_then(|l| l.trim().parse::<u16>().ok())
                });
            let page = port
                .and_then(|port| get_json(port, "/json/list"))
                .and_then(|targets| {
                    targets.as_array()?.iter().find_map(|t| {
                        (t["type"] == "page")
                            .then(|| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
                            .flatten()
                    })
                });
            if let Some(url) = page {
                let (socket, _) = tungstenite::connect(url).expect("DevTools socket");
                if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                }
                return socket;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends one DevTools command and returns its result (events in between are skipped).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({ "id": id, "method": method, "params": params });
        self.page
            .send(Message::text(command.to_string()))
            .expect("send to chromium");
        loop {
            let message = match self.page.read() {
                Ok(message) => message,
                // A child process ending (a node the test killed) interrupts the read.
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => {
                    continue
                }
                Err(e) => panic!("read from chromium: {e}"),
            };
            let Message::Text(text) = message else {
                continue;
            };
            let answer: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if answer["id"] == id {
                assert!(answer.get("error").is_none(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// The value of a script expression in the page (awaited if it is a promise).
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Saves a PNG of the page as it is shown.
    pub fn screenshot(&mut self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64");
        std::fs::write(path, png).expect("write screenshot");
    }
}

fn rand_u32() -> u32 {
    let mut bytes = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut bytes);
    }
    u32::from_le_bytes(bytes)
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
