//! Automatic prefix caching on the real model: greedy outputs with the cache are token-identical
//! to outputs without it, for prompts that share prefixes ending mid-block, on a block boundary,
//! or covering the whole prompt; `cached_tokens` reports what was reused. Penalties read the
//! whole prompt on a cache hit too (the cached part never goes through the forward pass), and a
//! request admitted onto cached blocks is out of the queue (its queue deadline no longer applies).

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
    complete_with(s, prompt, json!({})).await
}

/// [`complete`] with more request fields.
async fn complete_with(s: &Server, prompt: &[u64], extra: Value) -> (Vec<String>, u64) {
    let mut body = json!({"prompt": prompt, "max_tokens": 12, "temperature": 0, "logprobs": 0, "ignore_eos": true});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
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

#[tokio::test]
async fn penalties_see_the_cached_part_of_the_prompt() {
    let on = start(&[]);
    let off = start(&["--no-prefix-cache"]);
    // A prompt that repeats itself, so the penalties change the greedy answer; long enough for
    // two cached blocks.
    let text = "one two three four five six seven eight nine ten eleven twelve. \
                one two three four five six seven eight nine ten eleven twelve. \
                one two three four five six seven eight nine ten eleven twelve. one two three";
    let prompt = tokenize(&on, text).await;
    assert!(prompt.len() > 32, "{}", prompt.len());
    let penalties = json!({"max_tokens": 16, "repetition_penalty": 1.5, "frequency_penalty": 0.7,
                           "presence_penalty": 0.4});
    let (plain, _) = complete_with(&off, &prompt, penalties.clone()).await;
    let (first, cached) = complete_with(&on, &prompt, penalties.clone()).await;
    assert_eq!((first.clone(), cached), (plain.clone(), 0));
    let (again, cached) = complete_with(&on, &prompt, penalties).await;
    assert!(cached >= 32, "{cached}");
    assert_eq!(
        again, plain,
        "a cache hit must not change what the penalties see"
    );
    let (unpenalised, _) = complete(&off, &prompt).await;
    assert_ne!(
        unpenalised[..12],
        plain[..12],
        "the penalties must matter here"
    );
}

/// A request admitted onto cached blocks has left the queue: `--max-queue-time` no longer
/// applies to it, however long it then runs (it used to be failed as a queue timeout mid-run,
/// because only admissions at position 0 counted).
#[tokio::test]
async fn the_queue_deadline_ends_at_admission_on_a_cache_hit_too() {
    let s = start(&["--max-queue-time", "1"]);
    let text = "You are a careful assistant. Answer briefly and precisely, and never invent \
                facts. The user is a student of physics who likes short answers with examples.";
    let prompt = tokenize(&s, text).await;
    let (_, cached) = complete(&s, &prompt).await;
    assert_eq!(cached, 0);
    // Runs for several seconds past the deadline, on the cached prompt.
    let started = std::time::Instant::now();
    let (tokens, cached) = complete_with(&s, &prompt, json!({"max_tokens": 600})).await;
    assert!(cached > 0, "no cache hit");
    assert_eq!(tokens.len(), 600);
    assert!(
        started.elapsed() > Duration::from_millis(1500),
        "the request ran only {:?}: it shows nothing about the deadline",
        started.elapsed()
    );
}
