//! `speculation`: Wick without speculation against Wick with n-gram speculation
//! (`--speculate ngram`) and with a draft model (`--draft-model`), and llama.cpp's
//! `llama-server` with the same draft model (`-md`, its defaults otherwise) when
//! `--llama-server` names it; on the same model and threads. The servers run at once and their
//! samples take turns (one request at a time, the order rotating), so that a shared machine's
//! slow minutes hit all of them:
//!
//! - code editing: one client asks for a given 40-line function back with one change (greedy,
//!   up to 640 tokens); decode tokens/s after the first token;
//! - free chat: one client, a short story (greedy, 256 tokens, `ignore_eos`); the same;
//! - aggregate: 16 clients, short chat prompts, 96 output tokens each; output tokens per second
//!   of wall time.
//!
//! Each server's rate is the median of its samples; each ratio is the median of the ratios
//! within a round, printed with their range, so that the machine's slow minutes, which hit
//! neighbours in a round alike, cancel.
//!
//! Wick's answers are checked to be the same text with and without speculation (it changes
//! nothing). Flags: `--bin`, `--model`, `--draft-model` (default Qwen2.5-Coder-0.5B),
//! `--llama-server PATH`, `--runs N` (rounds of each workload; default one per server, so that
//! each takes each place in the order once),
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

/// Each server's samples over `runs` rounds of `sample` (the order rotating each round), and
/// the answers of the last.
async fn rotate<F, Fut>(bases: &[&str], runs: usize, sample: F) -> (Samples, Vec<Vec<String>>)
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
    (Samples(rates), texts)
}

/// One workload's rates: per server, one sample per round.
struct Samples(Vec<Vec<f64>>);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

impl Samples {
    fn median(&self, server: usize) -> f64 {
        median(self.0[server].clone())
    }

    /// Server `a`'s rate over server `b`'s, round by round (the two took their turns minutes
    /// apart at most, so a slow stretch of the machine hits both): the median and the range.
    fn ratio(&self, a: usize, b: usize) -> Ratio {
        let r: Vec<f64> = (self.0[a].iter().zip(&self.0[b]))
            .map(|(x, y)| x / y)
            .collect();
        let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = r.iter().copied().fold(0.0, f64::max);
        Ratio {
            median: median(r),
            lo,
            hi,
        }
    }
}

struct Ratio {
    median: f64,
    lo: f64,
    hi: f64,
}

impl std::fmt::Display for Ratio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.2}x", self.median)?;
        if self.hi > self.lo {
            write!(f, " ({:.2}-{:.2})", self.lo, self.hi)?;
        }
        Ok(())
    }
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

/// Each server's proposed and accepted draft tokens so far (`wick_spec_*`).
async fn spec_counts(bases: &[&str]) -> Vec<[u64; 2]> {
    let mut out = Vec::new();
    for base in bases {
        let text = (reqwest::get(format!("{base}/metrics")).await)
            .and_then(|r| r.error_for_status())
            .expect("/metrics");
        let text = text.text().await.expect("/metrics");
        let value = |name: &str| {
            (text.lines())
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                .unwrap_or(0.0) as u64
        };
        out.push([
            value("wick_spec_proposed_tokens_total"),
            value("wick_spec_accepted_tokens_total"),
        ]);
    }
    out
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
    // By default each server takes each place in the order once.
    let runs: usize = (arg("--runs", &bases.len().to_string()).parse()).expect("--runs N");
    let wick = &bases[..3];
    let counts = spec_counts(wick).await;
    let (edit, edit_texts) = rotate(&bases, runs, |b| single(b, edit_body())).await;
    let edit_counts = spec_counts(wick).await;
    let story = chat_prompt("a lighthouse keeper", 256);
    let (chat, chat_texts) = rotate(&bases, runs, |b| single(b, story.clone())).await;
    let chat_counts = spec_counts(wick).await;
    let (agg, agg_texts) = rotate(&bases, runs, aggregate).await;
    let agg_counts = spec_counts(wick).await;
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
        let cells: Vec<String> = (0..names.len())
            .map(|i| format!("{:.1}", v.median(i)))
            .collect();
        let (ngram, drafted) = (v.ratio(1, 0), v.ratio(2, 0));
        println!("| {name} | {} | {ngram} | {drafted} |", cells.join(" | "));
    }
    println!(
        "\nRates: medians of each server's {runs} samples; ratios: medians of the ratios within \
         each round (their range in brackets)."
    );
    println!("\n| workload | n-gram: proposed / accepted | draft model: proposed / accepted |");
    println!("|---|---|---|");
    let spans = [
        ("code editing", &counts, &edit_counts),
        ("free chat", &edit_counts, &chat_counts),
        ("16 clients", &chat_counts, &agg_counts),
    ];
    for (name, before, after) in spans {
        let cell = |i: usize| {
            let (p, a) = (after[i][0] - before[i][0], after[i][1] - before[i][1]);
            format!("{p} / {a} ({:.0}%)", 100.0 * a as f64 / p.max(1) as f64)
        };
        println!("| {name}, {runs} rounds | {} | {} |", cell(1), cell(2));
    }
    if names.len() > 3 {
        println!(
            "\nWick with n-gram lookup / llama-server with its draft: code editing {}. Wick with \
             its draft / llama-server with its draft: code editing {}, free chat {}, 16 clients {}.",
            edit.ratio(1, 3),
            edit.ratio(2, 3),
            chat.ratio(2, 3),
            agg.ratio(2, 3)
        );
    }
    println!("\nEvery Wick answer identical with and without speculation.");
    let json_path = arg("--json", "");
    if !json_path.is_empty() {
        let v: Vec<Value> = rows
            .iter()
            .map(|(n, v)| {
                let mut row = json!({"workload": n});
                for (i, name) in names.iter().enumerate() {
                    row[*name] = json!(v.0[i]);
                }
                row
            })
            .collect();
        std::fs::write(&json_path, serde_json::to_string_pretty(&v).unwrap()).expect("--json");
    }
}
