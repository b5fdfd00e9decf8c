//! Automatic prefix caching on the real model: greedy outputs with the cache are token-identical
//! to outputs without it, for prompts that share prefixes ending mid-block, on a block boundary,
//! or covering the whole prompt; `cached_tokens` reports what was reused.

mod common;
use common::*;

async fn tokenize(s: &Server, text: &str) -> Vec<u64> {
    let (status, body) = post(s, "/tokenize", json!({"prompt": text})).await;
    assert_eq!(status, 200);
    body["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect()
}

/// Greedy completion of a token prompt: (token texts, cached prompt tokens).
async fn complete(s: &Server, prompt: &[u64]) -> (Vec<String>, u64) {
    let body = json!({"prompt": prompt, "max_tokens": 12, "temperature": 0, "logprobs": 0, "ignore_eos": true});
    let (status, body) = post(s, "/v1/completions", body).await;
    assert_eq!(status, 200, "{body}");
    let tokens = body["choices"][0]["logprobs"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let cached = body["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    (tokens, cached)
}

#[tokio::test]
async fn cached_and_uncached_greedy_outputs_are_identical() {
    let on = start(&[]);
    let off = start(&["--no-prefix-cache"]);
    let text =
        "You are a careful assistant. Answer briefly and precisely, and never invent facts. \
                The user is a student of physics who likes short answers with one example each. \
                When a question is ambiguous, say which reading you chose before you answer it.";
    let base = tokenize(&on, text).await;
    assert!(base.len() > 40, "{}", base.len());
    let with = |n: usize, tail: &[u64]| -> Vec<u64> {
        let mut p = base[..n].to_vec();
        p.extend_from_slice(tail);
        p
    };
    // (prompt, tokens the cache should supply given the prompts before it)
    let cases: Vec<(Vec<u64>, u64)> = vec![
        (base.clone(), 0),
        // Shares 37 tokens (ends mid-block): the two full blocks before it are reused.
        (with(37, &[504, 3426]), 32),
        // Shares exactly two blocks.
        (with(32, &[1232, 216, 35]), 32),
        // The whole prompt again: every block but the last token's work is reused.
        (
            base.clone(),
            ((base.len() / 16) * 16).min(base.len() - 1) as u64,
        ),
    ];
    for (i, (prompt, want_cached)) in cases.iter().enumerate() {
        let (cached_out, cached) = complete(&on, prompt).await;
        let (plain_out, plain_cached) = complete(&off, prompt).await;
        assert_eq!(cached_out, plain_out, "case {i}");
        assert_eq!(cached, *want_cached, "case {i}");
        assert_eq!(plain_cached, 0, "case {i}");
    }
    let metrics = metrics(&on).await;
    assert!(
        metrics.contains("wick_prefix_cache_hits_total"),
        "{metrics}"
    );
}
