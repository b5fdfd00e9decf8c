//! `compare --long`: the long-context workloads of issue 19 on Qwen2.5-Coder-1.5B (by default),
//! Wick with an f32 and with an f16 KV cache against llama-server, all three up at once:
//!
//! - prefill of a ~4,000-token prompt: prompt tokens / TTFT;
//! - decode at that context: the same request goes on for 64 tokens (`ignore_eos`); tokens/s
//!   after the first.
//!
//! Each round sends one such request to every server in turn, the order rotated each round so
//! that each server takes each place; the figures are medians over the rounds (`--runs`, default
//! 3). Every prompt starts with a number of its own, so no prefix cache helps. llama-server runs
//! with one slot of 8,192 tokens (`-c 8192 -np 1`, its f16 cache); Wick with 1,024 MiB of KV
//! cache (enough for one such sequence in either type).

use super::compare::{body, cell, median, prompt, ratio, start_llama_with, write_json};
use super::{arg, start_model, stream_chat, Server};
use serde_json::{json, Value};

/// Words in the prompt: about 4,000 tokens with the chat template.
const WORDS: usize = 3_960;
/// Tokens decoded after the prompt.
const DECODE: u64 = 64;

/// One sample: (prefill tokens/s, decode tokens/s, prompt tokens).
async fn sample(base: &str) -> (f64, f64, u64) {
    let t = stream_chat(base, &body(prompt(WORDS), DECODE)).await;
    let prefill = t.prompt_tokens as f64 / t.ttft.as_secs_f64();
    let decode = (t.completion_tokens - 1) as f64 / (t.total - t.ttft).as_secs_f64();
    (prefill, decode, t.prompt_tokens)
}

pub async fn run(threads: &str) {
    let model = arg("--model", "models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf");
    let runs: usize = arg("--runs", "3").parse().expect("--runs: a number");
    let mut servers: Vec<(String, Server)> = Vec::new();
    for dtype in ["f32", "f16"] {
        let flags = ["--threads", threads, "--kv-cache-memory", "1024"];
        let server =
            start_model(&model, &[&flags[..], &["--kv-cache-dtype", dtype]].concat()).await;
        servers.push((format!("wick-{dtype}"), server));
    }
    let llama = arg("--llama-server", "");
    if !llama.is_empty() {
        let flags = ["-c", "8192", "-np", "1"];
        servers.push((
            "llama-server".into(),
            start_llama_with(&llama, &model, threads, &flags).await,
        ));
    }
    // Warm-up: first touch of the weights.
    for (_, s) in &servers {
        stream_chat(&s.base, &body(prompt(30), 4)).await;
    }
    let n = servers.len();
    let (mut prefill, mut decode) = (vec![Vec::new(); n], vec![Vec::new(); n]);
    let mut prompt_tokens = vec![0; n];
    for round in 0..runs {
        for k in 0..n {
            let i = (round + k) % n;
            let (p, d, tokens) = sample(&servers[i].1.base).await;
            prefill[i].push(p);
            decode[i].push(d);
            prompt_tokens[i] = tokens;
        }
    }
    let mut results = serde_json::Map::new();
    for (i, (name, _)) in servers.iter().enumerate() {
        results.insert(
            name.clone(),
            json!({
                "prefill_tokens_per_s": median(prefill[i].clone()),
                "decode_tokens_per_s": median(decode[i].clone()),
                "prompt_tokens": prompt_tokens[i],
                "prefill_samples": prefill[i],
                "decode_samples": decode[i],
            }),
        );
    }
    let report = json!({"threads": threads, "model": model, "runs": runs, "results": results});
    write_json(&report);
    print_table(&report["results"]);
}

fn print_table(results: &Value) {
    let figure = |server: &str, key: &str| results[server][key].as_f64();
    println!(
        "| measure | Wick, f32 KV | Wick, f16 KV | llama-server | f32 / llama | f16 / llama |"
    );
    println!("|---|---|---|---|---|---|");
    let tokens = results["wick-f32"]["prompt_tokens"].as_u64().unwrap_or(0);
    for (label, key) in [
        (
            format!("prefill, {tokens}-token prompt (tokens/s)"),
            "prefill_tokens_per_s",
        ),
        (
            format!("decode at {tokens} tokens of context (tokens/s)"),
            "decode_tokens_per_s",
        ),
    ] {
        let (a, b, l) = (
            figure("wick-f32", key),
            figure("wick-f16", key),
            figure("llama-server", key),
        );
        println!(
            "| {label} | {} | {} | {} | {} | {} |",
            cell(a),
            cell(b),
            cell(l),
            ratio(a, l),
            ratio(b, l)
        );
    }
}
