//! `compare`: Wick against llama.cpp's `llama-server` on the same GGUF with the same number of
//! threads, one server at a time, with the same client workloads:
//!
//! - single-stream decode: one client, a short prompt, 128 tokens with `ignore_eos`; tokens/s
//!   after the first token (median of 3);
//! - prefill: one client, a ~500-token prompt, one output token; prompt tokens / TTFT (median of
//!   3);
//! - aggregate: 4, 16 and 64 clients, short prompts (~40 tokens), two requests each of 64 output
//!   tokens; output (and prompt plus output) tokens per second of wall time;
//! - mixed: 64 clients at once, alternately ~40- and ~500-token prompts, 64 output tokens each;
//!   TTFT and inter-token latency p50/p90/p99, output tokens/s.
//!
//! Every prompt starts with a number no other request has, so neither server's prefix cache can
//! help. Each server's resident memory once ready (before any request) is reported too, and
//! below the table how close each server's decode and prefill come to the machine's limits
//! ([`limits`]): the memory bandwidth measured before and after the servers ran, against the
//! weight bytes a decode token reads; the multiply-adds a second its prefill does.
//! Flags: `--llama-server PATH` (else Wick alone), `--bin`, `--model`, `--threads`,
//! `--json FILE` (the figures as JSON; the table goes to stdout), `--completions` (plain prompts
//! on `/v1/completions`, for base models), `--quick` (decode, prefill and 16 clients only: the
//! figures the real-models targets name, in a fraction of the time on larger models; both servers
//! run at once and their samples alternate, so that a shared machine's slow minutes hit both),
//! `--long` (the long-context workloads instead, see [`super::long_context`]),
//! `--wick-kv-mib` and `--wick-kv-dtype` (Wick's KV cache, f16 by default as the server's; give
//! it the same 65,536 tokens llama-server holds in f16: SmolLM2's default 1,536 MiB, 1,792 MiB
//! for Qwen2.5-1.5B).

use super::{arg, limits, percentile, start, stream_chat, wait_ready, Server, Trace};
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Context and slots for llama-server: 64 slots of 1,024 tokens (a long prompt plus its output).
const LLAMA_SLOTS: usize = 64;
const LLAMA_CONTEXT: usize = 64 * 1024;
/// Wick's KV cache for the same 65,536 tokens (f16 K and V: 23 KiB per token for SmolLM2).
const WICK_KV_MIB: &str = "1536";

/// Resident memory of process `pid` in MB (Linux `VmRSS`).
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1000.0)
}

/// Prompts never repeat (see the module doc).
static NEXT_PROMPT: AtomicUsize = AtomicUsize::new(0);

const WORDS: [&str; 24] = [
    "river", "garden", "stone", "light", "market", "winter", "paper", "window", "music", "forest",
    "bridge", "letter", "summer", "harbor", "candle", "valley", "clock", "island", "mirror",
    "engine", "meadow", "signal", "copper", "lantern",
];

/// A user message of about `words + 8` tokens that no other request shares a prefix with.
pub(super) fn prompt(words: usize) -> Value {
    let id = NEXT_PROMPT.fetch_add(1, Ordering::Relaxed);
    let mut text = format!("Request {id}. Write a story that uses these words:");
    for i in 0..words {
        text.push(' ');
        text.push_str(WORDS[(i * 7 + id * 5) % WORDS.len()]);
    }
    json!([{"role": "user", "content": text}])
}

/// A streamed request for `messages`: chat, or with `--completions` the user message's text as
/// a plain prompt (base models without a chat template, such as Gemma 3 270M).
pub(super) fn body(messages: Value, max_tokens: u64) -> Value {
    let mut body = json!({"max_tokens": max_tokens, "temperature": 0, "ignore_eos": true,
                          "stream": true, "stream_options": {"include_usage": true}});
    if std::env::args().any(|a| a == "--completions") {
        body["prompt"] = messages[0]["content"].clone();
    } else {
        body["messages"] = messages;
    }
    body
}

const SHORT: usize = 30;
const LONG: usize = 490;

/// Starts llama-server like its users do for this model on this machine.
async fn start_llama(bin: &str, model: &str, threads: &str) -> Server {
    let (ctx, slots) = (LLAMA_CONTEXT.to_string(), LLAMA_SLOTS.to_string());
    start_llama_with(bin, model, threads, &["-c", &ctx, "-np", &slots]).await
}

/// Starts llama-server on `model` with `threads` and the `extra` flags.
pub async fn start_llama_with(bin: &str, model: &str, threads: &str, extra: &[&str]) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port();
    let child = Command::new(bin)
        .args([
            "-m",
            model,
            "-t",
            threads,
            "-tb",
            threads,
            "--host",
            "127.0.0.1",
        ])
        .args(["--port", &port.to_string()])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(Server { child, base }, "/health").await
}

/// A table cell: the figure to one decimal, or `-` where there is none.
pub(super) fn cell(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

/// `a / b` as a table cell (`1.23x`), or `-`.
pub(super) fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

/// Writes `report` to the `--json` file, when one is named.
pub(super) fn write_json(report: &Value) {
    let json_path = arg("--json", "");
    if !json_path.is_empty() {
        let text = serde_json::to_string_pretty(report).expect("JSON");
        std::fs::write(&json_path, text).unwrap_or_else(|e| panic!("{json_path}: {e}"));
    }
}

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `clients` concurrent clients, each sending `per_client` requests one after another;
/// `long(i)` says whether request `i` of a client gets a long prompt.
async fn concurrent(
    base: &str,
    clients: usize,
    per_client: usize,
    long: fn(usize) -> bool,
) -> (Vec<Trace>, Duration) {
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let base = base.to_string();
            tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..per_client {
                    let words = if long(c + i) { LONG } else { SHORT };
                    out.push(stream_chat(&base, &body(prompt(words), 64)).await);
                }
                out
            })
        })
        .collect();
    let mut traces = Vec::new();
    for t in tasks {
        traces.extend(t.await.expect("client task"));
    }
    (traces, start.elapsed())
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// One single-stream decode sample: tokens/s after the first token.
async fn decode_sample(base: &str) -> f64 {
    let t = stream_chat(base, &body(prompt(SHORT), 128)).await;
    (t.completion_tokens - 1) as f64 / (t.total - t.ttft).as_secs_f64()
}

/// One prefill sample: (prompt tokens / TTFT, prompt tokens).
async fn prefill_sample(base: &str) -> (f64, u64) {
    let t = stream_chat(base, &body(prompt(LONG), 1)).await;
    (
        t.prompt_tokens as f64 / t.ttft.as_secs_f64(),
        t.prompt_tokens,
    )
}

/// `clients` clients sending two short requests each: the aggregate figures.
async fn aggregate_sample(base: &str, clients: usize) -> Value {
    let (traces, wall) = concurrent(base, clients, 2, |_| false).await;
    let out: u64 = traces.iter().map(|t| t.completion_tokens).sum();
    let all: u64 = out + traces.iter().map(|t| t.prompt_tokens).sum::<u64>();
    json!({
        "clients": clients,
        "requests": traces.len(),
        "output_tokens_per_s": out as f64 / wall.as_secs_f64(),
        "total_tokens_per_s": all as f64 / wall.as_secs_f64(),
    })
}

/// The quick set (decode, prefill, 16 clients) on several servers at once, their samples taken
/// in turn (server A, server B, A, B, ...), so that a slow minute of a shared machine lands on
/// both; medians of 3 (decode, prefill) and the better of 2 (16 clients).
async fn measure_interleaved(bases: &[&str]) -> Vec<Value> {
    for base in bases {
        stream_chat(base, &body(prompt(SHORT), 8)).await;
    }
    let n = bases.len();
    let (mut decode, mut prefill) = (vec![Vec::new(); n], vec![Vec::new(); n]);
    let mut prompt_tokens = vec![0; n];
    for _ in 0..3 {
        for (i, base) in bases.iter().enumerate() {
            decode[i].push(decode_sample(base).await);
        }
    }
    for _ in 0..3 {
        for (i, base) in bases.iter().enumerate() {
            let (rate, tokens) = prefill_sample(base).await;
            prefill[i].push(rate);
            prompt_tokens[i] = tokens;
        }
    }
    let mut aggregate: Vec<Option<Value>> = vec![None; n];
    for _ in 0..2 {
        for (i, base) in bases.iter().enumerate() {
            let sample = aggregate_sample(base, 16).await;
            let rate = |v: &Value| v["output_tokens_per_s"].as_f64().unwrap_or(0.0);
            if aggregate[i]
                .as_ref()
                .is_none_or(|best| rate(&sample) > rate(best))
            {
                aggregate[i] = Some(sample);
            }
        }
    }
    (0..n)
        .map(|i| {
            json!({
                "decode_tokens_per_s": median(decode[i].clone()),
                "prefill_tokens_per_s": median(prefill[i].clone()),
                "prefill_prompt_tokens": prompt_tokens[i],
                "aggregate": [aggregate[i].clone()],
                "interleaved": true,
            })
        })
        .collect()
}

/// Every workload against one server; the figures as JSON.
async fn measure(base: &str) -> Value {
    // Warm-up (first-touch of the weights, thread pools).
    stream_chat(base, &body(prompt(SHORT), 8)).await;

    let mut decode = Vec::new();
    for _ in 0..3 {
        decode.push(decode_sample(base).await);
    }
    let mut prefill = Vec::new();
    let mut prompt_tokens = 0;
    for _ in 0..3 {
        let (rate, tokens) = prefill_sample(base).await;
        prompt_tokens = tokens;
        prefill.push(rate);
    }
    let mut aggregate = Vec::new();
    for clients in [4, 16, 64] {
        aggregate.push(aggregate_sample(base, clients).await);
    }
    let mut report = json!({
        "decode_tokens_per_s": median(decode),
        "prefill_tokens_per_s": median(prefill),
        "prefill_prompt_tokens": prompt_tokens,
        "aggregate": aggregate,
    });
    let (traces, wall) = concurrent(base, 64, 1, |i| i % 2 == 1).await;
    let mut ttfts: Vec<Duration> = traces.iter().map(|t| t.ttft).collect();
    let mut gaps: Vec<Duration> = traces.iter().flat_map(|t| t.gaps.clone()).collect();
    ttfts.sort();
    gaps.sort();
    let out: u64 = traces.iter().map(|t| t.completion_tokens).sum();
    report["mixed"] = json!({
            "clients": 64,
            "ttft_p50_ms": ms(percentile(&ttfts, 0.5)),
            "ttft_p90_ms": ms(percentile(&ttfts, 0.9)),
            "ttft_p99_ms": ms(percentile(&ttfts, 0.99)),
            "itl_p50_ms": ms(percentile(&gaps, 0.5)),
            "itl_p90_ms": ms(percentile(&gaps, 0.9)),
            "itl_p99_ms": ms(percentile(&gaps, 0.99)),
            "output_tokens_per_s": out as f64 / wall.as_secs_f64(),
    });
    report
}

/// The aggregate figure for `clients`, wherever the run put it.
fn aggregate(results: &Value, clients: u64) -> Option<f64> {
    results["aggregate"]
        .as_array()?
        .iter()
        .find(|a| a["clients"].as_u64() == Some(clients))?["output_tokens_per_s"]
        .as_f64()
}

/// The rows of the table: (label, JSON pointer, or `aggregate:N` for N clients' output).
const ROWS: [(&str, &str); 13] = [
    ("resident memory once ready (MB)", "/rss_mb"),
    ("single-stream decode (tokens/s)", "/decode_tokens_per_s"),
    (
        "prefill, ~500-token prompt (tokens/s)",
        "/prefill_tokens_per_s",
    ),
    ("aggregate output, 4 clients (tokens/s)", "aggregate:4"),
    ("aggregate output, 16 clients (tokens/s)", "aggregate:16"),
    ("aggregate output, 64 clients (tokens/s)", "aggregate:64"),
    ("mixed, 64 clients: TTFT p50 (ms)", "/mixed/ttft_p50_ms"),
    ("mixed, 64 clients: TTFT p90 (ms)", "/mixed/ttft_p90_ms"),
    ("mixed, 64 clients: TTFT p99 (ms)", "/mixed/ttft_p99_ms"),
    (
        "mixed, 64 clients: inter-token p50 (ms)",
        "/mixed/itl_p50_ms",
    ),
    (
        "mixed, 64 clients: inter-token p90 (ms)",
        "/mixed/itl_p90_ms",
    ),
    (
        "mixed, 64 clients: inter-token p99 (ms)",
        "/mixed/itl_p99_ms",
    ),
    (
        "mixed, 64 clients: output (tokens/s)",
        "/mixed/output_tokens_per_s",
    ),
];

pub async fn run(threads: &str) {
    if std::env::args().any(|a| a == "--long") {
        return super::long_context::run(threads).await;
    }
    let model = arg("--model", "models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let quick = std::env::args().any(|a| a == "--quick");
    let kv_mib = arg("--wick-kv-mib", WICK_KV_MIB);
    let kv_dtype = arg("--wick-kv-dtype", "f16");
    let n_threads: usize = threads.parse().expect("--threads: a number");
    let bandwidth_before = limits::bandwidth_gbs(n_threads);
    let mut results = serde_json::Map::new();
    let wick = start(&[
        "--threads",
        threads,
        "--kv-cache-memory",
        &kv_mib,
        "--kv-cache-dtype",
        &kv_dtype,
    ])
    .await;
    let llama = arg("--llama-server", "");
    if quick {
        // Both servers up at once, their samples taken in turn.
        let mut servers = vec![("wick", wick)];
        if !llama.is_empty() {
            servers.push(("llama-server", start_llama(&llama, &model, threads).await));
        }
        let rss: Vec<Option<f64>> = servers.iter().map(|(_, s)| rss_mb(s.child.id())).collect();
        let bases: Vec<&str> = servers.iter().map(|(_, s)| s.base.as_str()).collect();
        let figures = measure_interleaved(&bases).await;
        for (((name, _), mut f), rss) in servers.iter().zip(figures).zip(rss) {
            f["rss_mb"] = json!(rss);
            results.insert((*name).into(), f);
        }
    } else {
        let rss = rss_mb(wick.child.id());
        let mut figures = measure(&wick.base).await;
        figures["rss_mb"] = json!(rss);
        results.insert("wick".into(), figures);
        drop(wick);
        if !llama.is_empty() {
            let server = start_llama(&llama, &model, threads).await;
            let rss = rss_mb(server.child.id());
            let mut figures = measure(&server.base).await;
            figures["rss_mb"] = json!(rss);
            results.insert("llama-server".into(), figures);
        }
    }
    let bandwidth = [bandwidth_before, limits::bandwidth_gbs(n_threads)];
    let cost = limits::token_cost(&model);
    let report = json!({
        "threads": threads,
        "model": model,
        "results": results,
        "limits": {
            "bandwidth_gbs_before": bandwidth[0],
            "bandwidth_gbs_after": bandwidth[1],
            "decode_bytes_per_token": cost.as_ref().map(|c| c.decode_bytes),
            "prefill_macs_per_token": cost.as_ref().map(|c| c.prefill_macs),
        },
    });
    write_json(&report);
    let figure = |server: &str, ptr: &str| match ptr.strip_prefix("aggregate:") {
        Some(n) => aggregate(&report["results"][server], n.parse().ok()?),
        None => report["results"][server].pointer(ptr)?.as_f64(),
    };
    println!("| measure | Wick | llama-server | Wick / llama-server |");
    println!("|---|---|---|---|");
    for (label, ptr) in ROWS {
        let (w, l) = (figure("wick", ptr), figure("llama-server", ptr));
        println!("| {label} | {} | {} | {} |", cell(w), cell(l), ratio(w, l));
    }
    println!(
        "\nMemory read bandwidth ({threads} threads, a sum over 1 GiB, best of 4 passes): \
         {:.1} GB/s before the servers ran, {:.1} GB/s after.",
        bandwidth[0], bandwidth[1]
    );
    let Some(cost) = cost else {
        return;
    };
    let (low, high) = (
        bandwidth[0].min(bandwidth[1]),
        bandwidth[0].max(bandwidth[1]),
    );
    for (server, name) in [("wick", "Wick"), ("llama-server", "llama-server")] {
        if let Some(rate) = figure(server, "/decode_tokens_per_s") {
            let gbs = rate * cost.decode_bytes as f64 / 1e9;
            println!(
                "- {name}, decode: {rate:.1} tokens/s x {:.1} MB of weights a token = {gbs:.1} \
                 GB/s, {:.0}% of the higher bandwidth figure ({:.0}% of the lower)",
                cost.decode_bytes as f64 / 1e6,
                100.0 * gbs / high,
                100.0 * gbs / low,
            );
        }
        if let Some(rate) = figure(server, "/prefill_tokens_per_s") {
            println!(
                "- {name}, prefill: {rate:.1} tokens/s x {:.1} M multiply-adds a token = {:.1} G \
                 multiply-adds a second",
                cost.prefill_macs as f64 / 1e6,
                rate * cost.prefill_macs as f64 / 1e9,
            );
        }
    }
}
