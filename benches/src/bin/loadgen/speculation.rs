//! `speculation`: Wick without speculation against Wick with n-gram speculation
//! (`--speculate ngram`), on the same model and threads. Both servers run at once and their
//! samples alternate (one request at a time), so that a shared machine's slow minutes hit both:
//!
//! - code editing: one client asks for a given 40-line function back with one change (greedy,
//!   up to 640 tokens); decode tokens/s after the first token (median of 5);
//! - free chat: one client, a short story (greedy, 256 tokens, `ignore_eos`); the same;
//! - aggregate: 16 clients, short chat prompts, 96 output tokens each; output tokens per second
//!   of wall time (median of 3).
//!
//! The two servers' answers are checked to be the same text (speculation changes nothing).
//! Flags: `--bin`, `--model`, `--threads`, `--json FILE`.

use super::{arg, chat_body, start, stream_chat, Trace};
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

/// The median of `runs` samples of `sample` on each server (alternating which goes first),
/// and the answers of the last.
async fn alternate<F, Fut>(bases: [&str; 2], runs: usize, sample: F) -> ([f64; 2], [Vec<String>; 2])
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = (f64, Vec<String>)>,
{
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut texts: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for run in 0..runs {
        for i in [run % 2, 1 - run % 2] {
            let (rate, t) = sample(bases[i].to_string()).await;
            rates[i].push(rate);
            texts[i] = t;
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    ([median(&mut rates[0]), median(&mut rates[1])], texts)
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
    let off = start(&["--threads", threads]).await;
    let on = start(&["--threads", threads, "--speculate", "ngram"]).await;
    let bases = [off.base.as_str(), on.base.as_str()];
    let (edit, edit_texts) = alternate(bases, 5, |b| single(b, edit_body())).await;
    let story = chat_prompt("a lighthouse keeper", 256);
    let (chat, chat_texts) = alternate(bases, 5, |b| single(b, story.clone())).await;
    let (agg, agg_texts) = alternate(bases, 3, aggregate).await;
    for (name, texts) in [
        ("code editing", &edit_texts),
        ("chat", &chat_texts),
        ("16 clients", &agg_texts),
    ] {
        assert_eq!(texts[0], texts[1], "speculation changed an answer ({name})");
    }
    let rows = [
        ("code editing, decode tokens/s (1 client)", edit[0], edit[1]),
        ("free chat, decode tokens/s (1 client)", chat[0], chat[1]),
        ("16 clients, output tokens/s", agg[0], agg[1]),
    ];
    println!("| workload | without | n-gram speculation | ratio |");
    println!("|---|---|---|---|");
    for (name, a, b) in rows {
        println!("| {name} | {a:.1} | {b:.1} | {:.2}x |", b / a);
    }
    println!("\nEvery answer identical with and without speculation.");
    let json_path = arg("--json", "");
    if !json_path.is_empty() {
        let v: Vec<Value> = rows
            .iter()
            .map(|(n, a, b)| json!({"workload": n, "without": a, "ngram": b}))
            .collect();
        std::fs::write(&json_path, serde_json::to_string_pretty(&v).unwrap()).expect("--json");
    }
}
