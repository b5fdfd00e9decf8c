//! Load generator: starts the servers it measures itself (on 127.0.0.1, ports chosen by the OS),
//! runs one scenario against each over the OpenAI streaming API, prints a Markdown table of the
//! figures side by side, and stops them. Every request has a timeout, so a run always ends.
//!
//! Scenarios:
//! - `shared-prefix`: Wick with and without prefix caching; requests that share a long system
//!   prompt and differ in a short question, streamed at a fixed concurrency: TTFT median and p90,
//!   total time.
//! - `multi-turn`: Wick with and without prefix caching; one conversation re-sent with each new
//!   turn: prompt tokens computed per turn.
//! - `compare`: Wick against llama.cpp's `llama-server` on the same GGUF and threads (see
//!   [`compare`]): decode, prefill, aggregate throughput and latency percentiles, also as JSON;
//!   with `--long`, prefill and decode at ~4,000 tokens of context ([`long_context`]).
//! - `speculation`: Wick with and without n-gram speculation (see [`speculation`]): code
//!   editing and free chat decode rates, 16-client throughput, answers checked identical.
//!
//! Run (after `cargo build --release -p wick-router`):
//! `cargo run --release -p wick-benches --bin loadgen -- shared-prefix`
//! `cargo run --release -p wick-benches --bin loadgen -- compare --llama-server "$(scripts/build-llama-server.sh)"`

mod compare;
mod limits;
mod long_context;
mod speculation;

use futures::StreamExt;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        // Already gone is fine.
        let _gone = self.child.kill();
        let _reaped = self.child.wait();
    }
}

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// Starts `wick serve` on a port the OS picks and waits until it is ready.
async fn start(extra: &[&str]) -> Server {
    start_model(
        &arg("--model", "models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        extra,
    )
    .await
}

/// [`start`] on `model`.
async fn start_model(model: &str, extra: &[&str]) -> Server {
    let bin = arg("--bin", "target/release/wick");
    let mut child = Command::new(&bin)
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--model",
            model,
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    let stdout = child.stdout.take().expect("piped");
    let base = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("wick: listening on ").map(String::from));
    let Some(base) = base else {
        let status = child.wait();
        panic!("the server exited before listening: {status:?}");
    };
    wait_ready(Server { child, base }, "/ready").await
}

/// Polls `path` until it answers 200 (two minutes at most; then the server is stopped).
async fn wait_ready(server: Server, path: &str) -> Server {
    let c = reqwest::Client::new();
    for _ in 0..1200 {
        if let Ok(r) = c.get(format!("{}{path}", server.base)).send().await {
            if r.status() == 200 {
                return server;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Dropping the server kills and reaps the process.
    drop(server);
    panic!("the server did not become ready");
}

/// What one streamed chat request saw.
struct Trace {
    /// Time to the first content chunk.
    ttft: Duration,
    /// Gaps between consecutive content chunks (inter-token latencies).
    gaps: Vec<Duration>,
    total: Duration,
    prompt_tokens: u64,
    /// From the usage chunk, else the number of content chunks.
    completion_tokens: u64,
    cached_tokens: u64,
    text: String,
}

fn chat_body(messages: &Value, max_tokens: u64) -> Value {
    json!({"messages": messages, "max_tokens": max_tokens, "temperature": 0,
           "stream": true, "stream_options": {"include_usage": true}})
}

/// Streams one chat request with `body` (a chat completion with `stream: true`).
async fn stream_chat(base: &str, body: &Value) -> Trace {
    let start = Instant::now();
    // A body with a `prompt` goes to the completions API (base models have no chat template).
    let path = if body.get("prompt").is_some() {
        "/v1/completions"
    } else {
        "/v1/chat/completions"
    };
    let r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .timeout(Duration::from_secs(900))
        .json(body)
        .send()
        .await
        .expect("request");
    assert_eq!(
        r.status(),
        200,
        "{base}: {}",
        r.text().await.unwrap_or_default()
    );
    let mut stream = r.bytes_stream();
    let (mut usage, mut text, mut buf) = (Value::Null, String::new(), String::new());
    let mut arrivals = Vec::new();
    while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.expect("body")));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            // Comment lines (`:`, the keep-alives of a long prefill) carry no data.
            let Some(data) = event.lines().find_map(|l| l.strip_prefix("data:")) else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(data).expect("chunk JSON");
            let choice = &v["choices"][0];
            if let Some(piece) = choice["delta"]["content"]
                .as_str()
                .or_else(|| choice["text"].as_str())
            {
                if !piece.is_empty() {
                    arrivals.push(start.elapsed());
                }
                text.push_str(piece);
            }
            if !v["usage"].is_null() {
                usage = v["usage"].clone();
            }
        }
    }
    let total = start.elapsed();
    Trace {
        ttft: arrivals.first().copied().unwrap_or(total),
        gaps: arrivals.windows(2).map(|w| w[1] - w[0]).collect(),
        total,
        prompt_tokens: usage["prompt_tokens"].as_u64().unwrap_or(0),
        completion_tokens: usage["completion_tokens"]
            .as_u64()
            .unwrap_or(arrivals.len() as u64),
        cached_tokens: usage["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0),
        text,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn system_prompt(words: usize) -> String {
    let mut s =
        String::from("You are the help desk of a large library. Follow these house rules. ");
    let mut i = 0;
    while s.split_whitespace().count() < words {
        i += 1;
        s.push_str(&format!(
            "Rule {i}: books from shelf {} may be borrowed for {} days, and late returns cost {} cents per day. ",
            i * 7 % 97,
            7 + i % 21,
            10 + i * 3 % 40
        ));
    }
    s
}

/// One shared-prefix run: sorted TTFTs, total time, prompt tokens of a request.
struct SharedPrefixRun {
    ttfts: Vec<Duration>,
    total: Duration,
    prompt_tokens: u64,
}

async fn shared_prefix(server: &Server, requests: usize, concurrency: usize) -> SharedPrefixRun {
    let system = system_prompt(640);
    let gate = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let start = Instant::now();
    let mut handles = Vec::new();
    for i in 0..requests {
        let permit = gate.clone().acquire_owned().await.expect("open");
        let base = server.base.clone();
        let messages = json!([
            {"role": "system", "content": system},
            {"role": "user", "content": format!("Question {i}: how long may I borrow a book from shelf {}?", i * 13 % 97)}
        ]);
        handles.push(tokio::spawn(async move {
            let _permit = permit;
            stream_chat(&base, &chat_body(&messages, 8)).await
        }));
    }
    let mut ttfts = Vec::new();
    let mut prompt_tokens = 0;
    for h in handles {
        let trace = h.await.expect("task");
        prompt_tokens = trace.prompt_tokens;
        ttfts.push(trace.ttft);
    }
    let total = start.elapsed();
    ttfts.sort();
    SharedPrefixRun {
        ttfts,
        total,
        prompt_tokens,
    }
}

async fn multi_turn(server: &Server, turns: usize) -> Vec<(u64, u64)> {
    let mut messages = vec![json!({"role": "system", "content": system_prompt(120)})];
    let mut out = Vec::new();
    for t in 0..turns {
        messages.push(
            json!({"role": "user", "content": format!("Turn {t}: tell me about rule {}.", t + 1)}),
        );
        let body = chat_body(&Value::Array(messages.clone()), 24);
        let trace = stream_chat(&server.base, &body).await;
        out.push((
            trace.prompt_tokens,
            trace.prompt_tokens - trace.cached_tokens,
        ));
        messages.push(json!({"role": "assistant", "content": trace.text}));
    }
    out
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e3)
}

#[tokio::main]
async fn main() {
    let scenario = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "shared-prefix".into());
    let threads = arg("--threads", "2");
    match scenario.as_str() {
        "shared-prefix" => {
            let requests: usize = arg("--requests", "32").parse().expect("--requests");
            let concurrency: usize = arg("--concurrency", "4").parse().expect("--concurrency");
            let mut rows = Vec::new();
            for (name, flags) in [("on", vec![]), ("off", vec!["--no-prefix-cache"])] {
                let mut args = vec!["--threads", threads.as_str()];
                args.extend(flags);
                let server = start(&args).await;
                rows.push((name, shared_prefix(&server, requests, concurrency).await));
            }
            println!("{requests} requests, concurrency {concurrency}, prompt of {} tokens, 8 output tokens\n", rows[0].1.prompt_tokens);
            println!("| prefix cache | TTFT median (ms) | TTFT p90 (ms) | total (s) |");
            println!("|---|---|---|---|");
            for (name, run) in &rows {
                println!(
                    "| {name} | {} | {} | {:.1} |",
                    ms(percentile(&run.ttfts, 0.5)),
                    ms(percentile(&run.ttfts, 0.9)),
                    run.total.as_secs_f64()
                );
            }
            let (on, off) = (&rows[0].1, &rows[1].1);
            let median = |r: &SharedPrefixRun| percentile(&r.ttfts, 0.5).as_secs_f64();
            println!(
                "\nTTFT median: {:.1}x lower with the cache; total time: {:.1}x lower.",
                median(off) / median(on),
                off.total.as_secs_f64() / on.total.as_secs_f64()
            );
        }
        "multi-turn" => {
            let turns: usize = arg("--turns", "10").parse().expect("--turns");
            let mut cols = Vec::new();
            for flags in [vec![], vec!["--no-prefix-cache"]] {
                let mut args = vec!["--threads", threads.as_str()];
                args.extend(flags);
                let server = start(&args).await;
                cols.push(multi_turn(&server, turns).await);
            }
            println!("| turn | prompt tokens | computed, cache on | computed, cache off |");
            println!("|---|---|---|---|");
            for (t, (on, off)) in cols[0].iter().zip(&cols[1]).enumerate() {
                println!("| {} | {} | {} | {} |", t + 1, on.0, on.1, off.1);
            }
        }
        "compare" => compare::run(&threads).await,
        "speculation" => speculation::run(&threads).await,
        other => {
            panic!("unknown scenario `{other}` (shared-prefix, multi-turn, compare, speculation)")
        }
    }
}
