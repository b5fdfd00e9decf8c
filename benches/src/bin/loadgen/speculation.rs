//! `speculation`: Wick without speculation against Wick with n-gram speculation
//! (`--speculate ngram`) and with a draft model (`--draft-model`), and llama.cpp's
//! `llama-server` with the same draft model (`-md`, its defaults otherwise) when
//! `--llama-server` names it; on the same model and threads. The servers run at once and their
//! samples take turns (one request at a time, the order rotating), so that a shared machine's
//! slow minutes hit all of them:
//!
//! - code editing: one client asks for a given 40-line function back with one change (greedy,
//!   up to 640 tokens); decode tokens/s after the first token (median of 5);
//! - free chat: one client, a short story (greedy, 256 tokens, `ignore_eos`); the same;
//! - aggregate: 16 clients, short chat prompts, 96 output tokens each; output tokens per second
//!   of wall time (median of 3).
//!
//! Wick's answers are checked to be the same text with and without speculation (it changes
//! nothing). Flags: `--bin`, `--model`, `--draft-model` (default Qwen2.5-Coder-0.5B),
//! `--llama-server PATH`, `--runs N` (single-client samples per server, default 5),
//! `--threads`, `--json FILE`.

use super::compare::start_llama_with;
use super::{arg, chat_body, start, stream_chat, Server, Trace};
use serde_json::{json, Value};
use std::time::Instant;

/// A 40-line Python function, to be given back with one change.
fn function() -> String {
    let mut f = String::from("def summarize(orders, tax_rate, discounts):\n");
    f.push_str("    \"\"\"Totals, taxes and discounts of a list of orders.\"\"\"\n");
    f.push_str("    totals = {}\n");
    for (i, field) in [
        "subtotal",
        "shipping",
        "handling",
        "insurance",
        "gift_wrap",
        "coupon",
        "loyalty",
        "bulk",
        "seasonal",
        "referral",
        "student",
        "senior",
    ]
    .iter()
    .enumerate()
    {
        f.push_str(&format!("    {field} = sum(o.{field} for o in orders)\n"));
        f.push_str(&format!(
            "    totals[\"{field}\"] = round({field} * (1 + tax_rate), 2)\n"
        ));
        if i % 2 == 0 {
            f.push_str(&format!("    {field} -= discounts.get(\"{field}\", 0)\n"));
        }
    }
    f.push_str("    return totals\n");
    f
}

fn edit_body() -> Value {
    let messages = json!([{"role": "user", "content": format!(
        "Here is a Python function:\n\n```python\n{}```\n\nRewrite the whole function with one \
         change: rename the parameter `orders` to `purchases`. Answer with the code only.",
        function())}]);
    chat_body(&messages, 640)
}

fn chat_prompt(topic: &str, max_tokens: u64) -> Value {
    let messages = json!([{"role": "user",
                           "content": format!("Write a short story about {topic}.")}]);
    let mut body = chat_body(&messages, max_tokens);
    body["ignore_eos"] = json!(true);
    body
}

/// Decode tokens per second after the first token, and the answer.
fn decode_rate(t: &Trace) -> f64 {
    (t.completion_tokens.saturating_sub(1)) as f64 / (t.total - t.ttft).as_secs_f64()
}

/// The median of `runs` samples of `sample` on each server (the order rotating each run),
/// and the answers of the last.
async fn rotate<F, Fut>(bases: &[&str], runs: usize, sample: F) -> (Vec<f64>, Vec<Vec<String>>)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = (f64, Vec<String>)>,
{
    let n = bases.len();
    let mut rates = vec![Vec::new(); n];
    let mut texts = vec![Vec::new(); n];
    for run in 0..runs {
        for i in (0..n).map(|k| (k + run) % n) {
            let (rate, t) = sample(bases[i].to_string()).await;
            rates[i].push(rate);
            texts[i] = t;
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    (rates.into_iter().map(median).collect(), texts)
}

const TOPICS: [&str; 16] = [
    "a lighthouse",
    "a train",
    "a robot",
    "the moon",
    "a garden",
    "a violin",
    "a storm",
    "a market",
    "a bridge",
    "a cat",
    "a library",
    "a river",
    "a clock",
    "a desert",
    "a ship",
    "a forest",
];

async fn aggregate(base: String) -> (f64, Vec<String>) {
    let start = Instant::now();
    let all = TOPICS.iter().map(|t| {
        let body = chat_prompt(t, 96);
        let base = base.clone();
        async move { stream_chat(&base, &body).await }
    });
    let traces = futures::future::join_all(all).await;
    let tokens: u64 = traces.iter().map(|t| t.completion_tokens).sum();
    let texts = traces.into_iter().map(|t| t.text).collect();
    (tokens as f64 / start.elapsed().as_secs_f64(), texts)
}

async fn single(base: String, body: Value) -> (f64, Vec<String>) {
    let t = stream_chat(&base, &body).await;
    (decode_rate(&t), vec![t.text])
}

pub async fn run(threads: &str) {
    let draft = arg(
        "--draft-model",
        "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    );
    let runs: usize = arg("--runs", "5").parse().expect("--runs N");
    let mut servers: Vec<(&str, Server)> = vec![
        ("without", start(&["--threads", threads]).await),
        (
            "n-gram",
            start(&["--threads", threads, "--speculate", "ngram"]).await,
        ),
        (
            "draft model",
            start(&["--threads", threads, "--draft-model", &draft]).await,
        ),
    ];
    let llama = arg("--llama-server", "");
    if !llama.is_empty() {
        let model = arg("--model", "models/SmolLM2-135M-Instruct.Q4_1.gguf");
        let extra = ["-md", draft.as_str(), "-np", "16", "-c", "32768"];
        let server = start_llama_with(&llama, &model, threads, &extra).await;
        servers.push(("llama-server -md", server));
    }
    let bases: Vec<&str> = servers.iter().map(|(_, s)| s.base.as_str()).collect();
    let (edit, edit_texts) = rotate(&bases, runs, |b| single(b, edit_body())).await;
    let story = chat_prompt("a lighthouse keeper", 256);
    let (chat, chat_texts) = rotate(&bases, runs, |b| single(b, story.clone())).await;
    let (agg, agg_texts) = rotate(&bases, runs.div_ceil(2), aggregate).await;
    for (name, texts) in [
        ("code editing", &edit_texts),
        ("chat", &chat_texts),
        ("16 clients", &agg_texts),
    ] {
        for (i, t) in texts.iter().enumerate().take(3).skip(1) {
            assert_eq!(&texts[0], t, "{} changed an answer ({name})", servers[i].0);
        }
    }
    let rows = [
        ("code editing, decode tokens/s (1 client)", &edit),
        ("free chat, decode tokens/s (1 client)", &chat),
        ("16 clients, output tokens/s", &agg),
    ];
    let names: Vec<&str> = servers.iter().map(|(n, _)| *n).collect();
    println!(
        "| workload | {} | n-gram / without | draft / without |",
        names.join(" | ")
    );
    println!("|---|{}---|---|", "---|".repeat(names.len()));
    for (name, v) in rows {
        let cells: Vec<String> = v.iter().map(|x| format!("{x:.1}")).collect();
        let (ngram, drafted) = (v[1] / v[0], v[2] / v[0]);
        println!(
            "| {name} | {} | {ngram:.2}x | {drafted:.2}x |",
            cells.join(" | ")
        );
    }
    if let Some(l) = edit.get(3) {
        let ratios = [edit[2] / l, chat[2] / chat[3], agg[2] / agg[3]];
        println!("\nWick with its draft / llama-server with its draft: code editing {:.2}x, free chat {:.2}x, 16 clients {:.2}x.", ratios[0], ratios[1], ratios[2]);
    }
    println!("\nEvery Wick answer identical with and without speculation.");
    let json_path = arg("--json", "");
    if !json_path.is_empty() {
        let v: Vec<Value> = rows
            .iter()
            .map(|(n, v)| {
                let mut row = json!({"workload": n});
                for (name, x) in names.iter().zip(v.iter()) {
                    row[*name] = json!(x);
                }
                row
            })
            .collect();
        std::fs::write(&json_path, serde_json::to_string_pretty(&v).unwrap()).expect("--json");
    }
}
