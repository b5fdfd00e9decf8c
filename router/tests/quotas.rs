//! Per-API-key limits on the real server (`--api-key-file` with names and limits): a key over its
//! tokens per minute gets 429 naming the limit, with `Retry-After`, while another key is served;
//! the requests-per-minute and concurrent-streams limits; each key's counters in `/metrics`,
//! labelled by its name or a hash, never by the key.

mod common;
use common::*;
use futures::StreamExt;

const KEYS: &str = "\
# name and limits per key
sk-alice  name=alice tpm=40
sk-bob    name=bob
sk-carol  name=carol rpm=2
sk-dave   streams=1   # labelled by a hash of the key
";
/// `key-` and the first 8 hex digits of SHA-256("sk-dave").
const DAVE: &str = "key-50115238";

async fn ask(s: &Server, key: &str, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}/v1/chat/completions", s.base))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Asserts a 429 whose OpenAI error names the key's limit, and returns its `Retry-After`.
async fn refused(r: reqwest::Response, says: &str) -> u64 {
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "rate_limit_error", "{e}");
    assert_eq!(e["error"]["code"], "rate_limit_exceeded", "{e}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains(says), "{message}");
    assert!(retry >= 1, "Retry-After {retry}");
    retry
}

#[tokio::test]
async fn each_key_is_held_to_its_own_limits_and_counted_apart() {
    let dir = std::env::temp_dir().join(format!("wick-quotas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keys");
    std::fs::write(&file, KEYS).unwrap();
    let s = start(&["--api-key-file", file.to_str().unwrap()]);
    let short = chat("Name a colour.", json!({"max_tokens": 1}));

    // Alice's first request uses more than her 40 tokens a minute; the next is refused until
    // the refill pays the debt, while Bob is served.
    let long = chat(
        "Name a colour.",
        json!({"max_tokens": 32, "ignore_eos": true}),
    );
    let r = ask(&s, "sk-alice", long).await;
    assert_eq!(r.status(), 200);
    let usage = r.json::<Value>().await.unwrap()["usage"].clone();
    assert_eq!(usage["completion_tokens"], 32);
    let prompt_tokens = usage["prompt_tokens"].as_f64().unwrap();
    let retry = refused(
        ask(&s, "sk-alice", short.clone()).await,
        "API key `alice` is over its limit of 40 tokens per minute",
    )
    .await;
    // The debt is what she used past 40, paid at 40 a minute.
    let debt = prompt_tokens + 32.0 - 40.0;
    assert!(
        (retry as f64) <= (debt * 1.5).ceil() + 1.0,
        "Retry-After {retry} for a debt of {debt} tokens"
    );
    assert_eq!(ask(&s, "sk-bob", short.clone()).await.status(), 200);
    // Anthropic's route answers in its own shape.
    let r = client()
        .post(format!("{}/v1/messages", s.base))
        .header("x-api-key", "sk-alice")
        .json(&json!({"model": "smol", "max_tokens": 4,
            "messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "rate_limit_error", "{e}");

    // Carol may start two requests a minute.
    for _ in 0..2 {
        assert_eq!(ask(&s, "sk-carol", short.clone()).await.status(), 200);
    }
    let retry = refused(
        ask(&s, "sk-carol", short.clone()).await,
        "API key `carol` is over its limit of 2 requests per minute",
    )
    .await;
    assert!((1..=30).contains(&retry), "Retry-After {retry}");

    // Dave may hold one stream: a second is refused while the first runs, and served once the
    // first is dropped.
    let mut streaming = chat(
        "Tell me a long story.",
        json!({"max_tokens": 400, "ignore_eos": true}),
    );
    streaming["stream"] = json!(true);
    let first = ask(&s, "sk-dave", streaming).await;
    assert_eq!(first.status(), 200);
    let mut body = first.bytes_stream();
    body.next().await.unwrap().unwrap();
    refused(
        ask(&s, "sk-dave", short.clone()).await,
        &format!("API key `{DAVE}` is over its limit of 1 concurrent streams"),
    )
    .await;
    let series = format!("wick_api_key_streams{{key=\"{DAVE}\"}}");
    assert_eq!(metric(&metrics(&s).await, &series), 1.0);
    drop(body);
    let mut waited = 0;
    while metric(&metrics(&s).await, &series) != 0.0 {
        assert!(waited < 300, "the dropped stream still holds Dave's place");
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    assert_eq!(ask(&s, "sk-dave", short.clone()).await.status(), 200);

    // Each key's counters, by name or hash; no key appears in the metrics.
    let m = metrics(&s).await;
    let series = |name: &str, labels: &str| metric(&m, &format!("{name}{{{labels}}}"));
    assert_eq!(
        series("wick_api_key_prompt_tokens_total", "key=\"alice\""),
        prompt_tokens
    );
    assert_eq!(
        series("wick_api_key_generation_tokens_total", "key=\"alice\""),
        32.0
    );
    assert_eq!(series("wick_api_key_requests_total", "key=\"alice\""), 1.0);
    assert_eq!(series("wick_api_key_requests_total", "key=\"bob\""), 1.0);
    assert_eq!(series("wick_api_key_requests_total", "key=\"carol\""), 2.0);
    assert_eq!(
        series("wick_api_key_requests_total", &format!("key=\"{DAVE}\"")),
        2.0
    );
    for (key, limit, times) in [
        ("alice", "tokens_per_minute", 2.0),
        ("bob", "tokens_per_minute", 0.0),
        ("carol", "requests_per_minute", 1.0),
        (DAVE, "concurrent_streams", 1.0),
    ] {
        let labels = format!("key=\"{key}\",limit=\"{limit}\"");
        assert_eq!(
            series("wick_api_key_rate_limited_total", &labels),
            times,
            "{labels}"
        );
    }
    assert_eq!(
        metric(&m, "wick_request_failure_total{reason=\"quota\"}"),
        4.0
    );
    assert!(!m.contains("sk-"), "a key in the metrics");
    std::fs::remove_dir_all(&dir).unwrap();
}
