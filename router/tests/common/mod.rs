//! Shared helpers of the server tests: start the real `wick serve` on 127.0.0.1:0 and talk to it.
#![allow(dead_code)]

pub use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
pub use std::time::Duration;

pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        // The process may already be gone; nothing else to clean.
        let _gone = self.child.kill();
        let _reaped = self.child.wait();
    }
}

pub fn model_path() -> PathBuf {
    catalogue_model("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Starts `wick serve` on a free loopback port and waits for its "listening" line.
pub fn start(extra: &[&str]) -> Server {
    start_model(&model_path(), extra)
}

/// A catalogue model's file under `models/`.
pub fn catalogue_model(file: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(file);
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-model.sh",
        path.display()
    );
    path
}

/// `wick serve` on `model` on a free loopback port, with `extra` flags, not started.
pub fn serve_command(model: &std::path::Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wick"));
    cmd.args([
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--threads",
        "2",
    ])
    .arg("--model")
    .arg(model)
    .args(["--served-model-name", "smol"])
    .args(extra);
    cmd
}

/// [`start`] on another model.
pub fn start_model(model: &std::path::Path, extra: &[&str]) -> Server {
    let mut child = serve_command(model, extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .unwrap();
        if let Some(addr) = line.strip_prefix("wick: listening on ") {
            break addr.to_string();
        }
    };
    let server = Server { child, base };
    server.wait_ready();
    server
}

/// The status of a GET, with a plain blocking HTTP/1.1 exchange (usable outside a runtime).
pub fn blocking_status(base: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let Ok(mut conn) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if conn.write_all(request.as_bytes()).is_err() {
        return 0;
    }
    let mut head = [0u8; 12];
    if conn.read_exact(&mut head).is_err() {
        return 0;
    }
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl Server {
    /// Waits until `/ready` answers 200 (the model is loaded).
    pub fn wait_ready(&self) {
        for _ in 0..1200 {
            if blocking_status(&self.base, "/ready") == 200 {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the server did not become ready");
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

pub async fn post(s: &Server, path: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(format!("{}{path}", s.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// The `data:` payloads of an SSE body, in order.
pub async fn sse(s: &Server, path: &str, body: Value) -> Vec<String> {
    let r = client()
        .post(format!("{}{path}", s.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.unwrap();
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {e:?}"))
                .to_string()
        })
        .collect()
}

pub fn chat(content: &str, extra: Value) -> Value {
    let mut body = json!({"model": "smol", "messages": [{"role": "user", "content": content}], "temperature": 0});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// `GET path`, answered.
async fn get(s: &Server, path: &str) -> reqwest::Response {
    client()
        .get(format!("{}{path}", s.base))
        .send()
        .await
        .unwrap()
}

/// The Prometheus text of `GET /metrics`.
pub async fn metrics(s: &Server) -> String {
    get(s, "/metrics").await.text().await.unwrap()
}

/// The value of one series (`name` or `name{labels}`, as the text format writes it) in a
/// Prometheus text exposition.
pub fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{series} missing"))
}

pub async fn info(s: &Server) -> Value {
    get(s, "/info").await.json().await.unwrap()
}
