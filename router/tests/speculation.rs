//! Speculative decoding changes nothing: the same 16 concurrent requests (greedy and seeded
//! sampling at temperature 0.8, with a grammar, with stop strings, with `n=2`) on a server with
//! n-gram speculation and on one without give the same tokens with the same log-probabilities,
//! and the speculating server did accept proposals (its `wick_spec_*` counters). The
//! speculating server's KV cache is small enough that it also preempts (recomputes) sequences.
//! Both report the same `system_fingerprint`: speculation is not part of what must match.
//! On Qwen2.5-Coder-1.5B, the same requests give the same answers without speculation, with
//! n-gram speculation and with Qwen2.5-Coder-0.5B drafting (`--draft-model`).

mod common;
use common::*;

const TEXT: &str = "The quick brown fox jumps over the lazy dog. The quick brown fox jumps \
                    over the lazy dog again. Pack my box with five dozen liquor jugs.";

const CODE: &str = "def total(items):\n    result = 0\n    for item in items:\n        \
                    result += item.price * item.count\n    return result\n";

/// The 16 requests: prompts that repeat their input (where lookup pays) and free ones.
fn requests() -> Vec<Value> {
    requests_of(48)
}

/// [`requests`] with `max_tokens` tokens each.
fn requests_of(max_tokens: u64) -> Vec<Value> {
    let prompts = [
        format!("Repeat this text exactly: {TEXT}"),
        format!("Rewrite this function with `count` renamed to `quantity`:\n{CODE}"),
        "Write a short poem about the sea.".to_string(),
        format!("Copy this list: {}", "red, green, blue, ".repeat(4)),
    ];
    let mut out = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let base = |extra: Value| {
            let mut body = chat(
                p,
                json!({"max_tokens": max_tokens, "logprobs": true, "top_logprobs": 2}),
            );
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            body
        };
        out.push(base(json!({})));
        out.push(base(json!({"temperature": 0.8, "seed": 11 + i, "n": 2})));
        out.push(base(
            json!({"temperature": 0.8, "seed": 5, "stop": ["jugs", "return", "\n\n"]}),
        ));
        out.push(base(json!({"response_format": {"type": "regex",
            "regex": "[A-Za-z ,.:\\n]{10,150}"}, "temperature": 0.8, "seed": 3})));
    }
    out
}

/// Each choice's tokens with their log-probabilities (and alternatives), and finish reason.
fn answers(body: &Value) -> Vec<(Vec<Value>, Value)> {
    body["choices"]
        .as_array()
        .unwrap_or_else(|| panic!("no choices: {body}"))
        .iter()
        .map(|c| {
            (
                c["logprobs"]["content"].as_array().unwrap().clone(),
                c["finish_reason"].clone(),
            )
        })
        .collect()
}

async fn run_all(s: &Server) -> Vec<Vec<(Vec<Value>, Value)>> {
    run_these(s, requests()).await
}

async fn run_these(s: &Server, requests: Vec<Value>) -> Vec<Vec<(Vec<Value>, Value)>> {
    let all = requests.into_iter().map(|body| async move {
        let (status, r) = post(s, "/v1/chat/completions", body).await;
        assert_eq!(status, 200, "{r}");
        answers(&r)
    });
    futures::future::join_all(all).await
}

/// The speculating server `s` accepted some of its proposals (never more than it made).
async fn accepted_proposals(s: &Server, what: &str) {
    let metrics = metrics(s).await;
    let proposed = metric(&metrics, "wick_spec_proposed_tokens_total");
    let accepted = metric(&metrics, "wick_spec_accepted_tokens_total");
    println!("{what}: proposed {proposed}, accepted {accepted}");
    assert!(
        accepted > 0.0 && accepted <= proposed,
        "{proposed} / {accepted}"
    );
}

/// The server `s` preempted sequences (its cache is small enough for the test to cover
/// preemption).
async fn preempted(s: &Server, what: &str) {
    let preempted = metric(&metrics(s).await, "wick_preemptions_total");
    println!("{what}: preemptions {preempted}");
    assert!(
        preempted > 0.0,
        "no preemption: the cache is too large for this test"
    );
}

async fn fingerprint(s: &Server) -> Value {
    let body = chat("Hi", json!({"max_tokens": 1}));
    post(s, "/v1/chat/completions", body).await.1["system_fingerprint"].clone()
}

#[tokio::test]
async fn ngram_speculation_gives_the_same_tokens_and_logprobs() {
    let plain = start(&[]);
    let spec = start(&["--speculate", "ngram", "--kv-cache-memory", "12"]);
    let (without, with) = tokio::join!(run_all(&plain), run_all(&spec));
    for (i, (a, b)) in without.iter().zip(&with).enumerate() {
        assert_eq!(a, b, "request {i} differs with speculation");
    }
    let (a, b) = tokio::join!(fingerprint(&plain), fingerprint(&spec));
    assert!(a.as_str().is_some_and(|f| f.starts_with("wick-")), "{a}");
    assert_eq!(a, b);
    preempted(&spec, "n-gram").await;
    // Whether the 16 at once speculate is the cost model's call (a full batch rarely pays for
    // proposals, and the two servers share the cores, which blurs the costs it learns). One
    // request alone on a fresh server, copying its prompt, gets proposals: the policy probes a
    // lone sequence until it knows a row's cost, and a row costs a lone step little.
    drop(spec);
    let spec = start(&["--speculate", "ngram"]);
    let alone = vec![requests_of(64).remove(0)];
    let without = run_these(&plain, alone.clone()).await;
    assert_eq!(
        without,
        run_these(&spec, alone).await,
        "the lone request differs"
    );
    accepted_proposals(&spec, "n-gram").await;
}

#[tokio::test]
async fn draft_model_and_ngram_speculation_give_the_same_tokens_on_qwen() {
    let (target, draft) = (
        catalogue_model("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
        catalogue_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
    );
    let draft = draft.to_str().unwrap();
    let plain = start_model(&target, &[]);
    let ngram = start_model(&target, &["--speculate", "ngram"]);
    let drafting = start_model(
        &target,
        &["--draft-model", draft, "--kv-cache-memory", "20"],
    );
    let requests = requests_of(16);
    let (without, by_lookup, by_draft) = tokio::join!(
        run_these(&plain, requests.clone()),
        run_these(&ngram, requests.clone()),
        run_these(&drafting, requests)
    );
    for (i, ((a, b), c)) in without.iter().zip(&by_lookup).zip(&by_draft).enumerate() {
        assert_eq!(a, b, "request {i} differs with n-gram speculation");
        assert_eq!(a, c, "request {i} differs with draft-model speculation");
    }
    accepted_proposals(&drafting, "draft model").await;
    preempted(&drafting, "draft model").await;
}

#[tokio::test]
async fn a_draft_model_with_another_tokenizer_stops_the_server_with_a_clear_error() {
    let qwen = catalogue_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    let smol = model_path();
    let out = serve_command(&qwen, &["--draft-model", smol.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("draft model") && err.contains("tokenizer"),
        "{err}"
    );
}
