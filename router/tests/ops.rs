//! Production behaviour of the real server: bad input, overload (429 with Retry-After), queue
//! deadlines, churn with disconnecting clients, graceful drain on SIGTERM, API keys, request ids.

mod common;
use common::*;

async fn raw(s: &Server, method: reqwest::Method, path: &str, body: Vec<u8>) -> (u16, Value) {
    let r = client()
        .request(method, format!("{}{path}", s.base))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Asserts an OpenAI error body with the given status, naming `param` when given.
fn assert_error(what: &str, got: (u16, Value), status: u16, param: Option<&str>) {
    assert_eq!(got.0, status, "{what}: {}", got.1);
    let e = &got.1["error"];
    assert!(e["message"].is_string(), "{what}: {}", got.1);
    assert!(e["type"].is_string(), "{what}: {}", got.1);
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{what}: {}", got.1);
    }
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_leaves_the_server_clean() {
    let s = start(&["--max-total-tokens", "512", "--max-body-bytes", "20000"]);
    let chat_path = "/v1/chat/completions";
    let post_raw = |body: &str| {
        raw(
            &s,
            reqwest::Method::POST,
            chat_path,
            body.as_bytes().to_vec(),
        )
    };
    assert_error(
        "malformed JSON",
        post_raw(r#"{"messages": ["#).await,
        400,
        None,
    );
    assert_error(
        "wrong type",
        post(&s, chat_path, chat("hi", json!({"temperature": "hot"}))).await,
        400,
        Some("temperature"),
    );
    assert_error(
        "missing field",
        post(&s, chat_path, json!({"model": "smol"})).await,
        400,
        Some("messages"),
    );
    assert_error(
        "negative number",
        post(&s, chat_path, chat("hi", json!({"max_tokens": -5}))).await,
        400,
        Some("max_tokens"),
    );
    assert_error(
        "huge number",
        post(&s, chat_path, chat("hi", json!({"max_tokens": 1e30}))).await,
        400,
        Some("max_tokens"),
    );
    assert_error(
        "huge n",
        post(&s, chat_path, chat("hi", json!({"n": 1000}))).await,
        400,
        Some("n"),
    );
    assert_error(
        "empty messages",
        post(&s, chat_path, json!({"messages": []})).await,
        400,
        Some("messages"),
    );
    assert_error(
        "unknown role",
        post(
            &s,
            chat_path,
            json!({"messages": [{"role": "wizard", "content": "hi"}]}),
        )
        .await,
        400,
        Some("messages[0].role"),
    );
    let mut bad_utf8 = br#"{"messages": [{"role": "user", "content": ""#.to_vec();
    bad_utf8.extend([0xff, 0xfe]);
    bad_utf8.extend(br#""}]}"#);
    assert_error(
        "invalid UTF-8",
        raw(&s, reqwest::Method::POST, chat_path, bad_utf8).await,
        400,
        None,
    );
    let big = chat(&"x".repeat(30_000), json!({}));
    assert_error(
        "body over the limit",
        post(&s, chat_path, big).await,
        413,
        None,
    );
    let long = "word ".repeat(600);
    let got = post(&s, chat_path, chat(&long, json!({}))).await;
    assert_eq!(
        got.1["error"]["code"], "context_length_exceeded",
        "{}",
        got.1
    );
    assert_error("prompt over the context", got, 400, None);
    let stops: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
    assert_error(
        "too many stop strings",
        post(&s, chat_path, chat("hi", json!({"stop": stops}))).await,
        400,
        Some("stop"),
    );
    assert_error(
        "unknown parameter",
        post(&s, chat_path, chat("hi", json!({"frobnicate": true}))).await,
        400,
        Some("frobnicate"),
    );
    assert_error(
        "top_logprobs over the cap",
        post(
            &s,
            chat_path,
            chat("hi", json!({"logprobs": true, "top_logprobs": 50})),
        )
        .await,
        400,
        Some("top_logprobs"),
    );
    assert_error(
        "wrong method",
        raw(&s, reqwest::Method::GET, chat_path, Vec::new()).await,
        405,
        None,
    );

    let (status, body) = post(&s, chat_path, chat("What is 12 plus 30?", json!({}))).await;
    assert_eq!(status, 200);
    assert_eq!(body["choices"][0]["message"]["content"], "12 + 30 = 32.");
    let i = info(&s).await;
    assert_eq!(i["requests_running"], 0);
    assert_eq!(i["requests_waiting"], 0);
    assert_eq!(i["kv_blocks_free"], i["kv_blocks_total"]);
}

#[tokio::test]
async fn overload_is_429_with_retry_after_and_admitted_requests_complete() {
    let s = start(&[
        "--max-concurrent-requests",
        "4",
        "--max-queued-requests",
        "4",
    ]);
    let body = json!({"prompt": "Once upon a time", "max_tokens": 48, "ignore_eos": true, "temperature": 0});
    let handles: Vec<_> = (0..32)
        .map(|_| {
            let url = format!("{}/v1/completions", s.base);
            let body = body.clone();
            tokio::spawn(async move {
                let r = client().post(url).json(&body).send().await.unwrap();
                let status = r.status().as_u16();
                let retry = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string());
                (status, retry, r.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let (mut ok, mut rejected) = (0, 0);
    for h in handles {
        let (status, retry, body) = h.await.unwrap();
        match status {
            200 => {
                ok += 1;
                assert_eq!(body["choices"][0]["finish_reason"], "length");
                assert_eq!(body["usage"]["completion_tokens"], 48);
            }
            429 => {
                rejected += 1;
                assert_eq!(retry.as_deref(), Some("1"));
                assert_eq!(body["error"]["code"], "overloaded");
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert_eq!((ok, rejected), (4, 28));
}

#[tokio::test]
async fn a_request_waiting_past_the_queue_time_gets_503() {
    let s = start(&["--max-running-sequences", "1", "--max-queue-time", "0.5"]);
    let long = json!({"prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": true});
    let url = format!("{}/v1/completions", s.base);
    let first = tokio::spawn(async move {
        client()
            .post(url)
            .json(&long)
            .send()
            .await
            .unwrap()
            .status()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = post(
        &s,
        "/v1/completions",
        json!({"prompt": "Hi", "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "queue_timeout");
    assert_eq!(first.await.unwrap(), 200);
}

#[tokio::test]
async fn churn_with_disconnecting_clients_leaves_nothing_behind() {
    let s = start(&[]);
    let prompts = [
        "The sky is",
        "My favourite food is",
        "Rust is a",
        "In the morning I",
    ];
    let body = |p: &str| json!({"prompt": p, "max_tokens": 8, "temperature": 0, "stream": true});
    let mut expected = Vec::new();
    for p in prompts {
        let events = sse(&s, "/v1/completions", body(p)).await;
        expected.push(streamed_text(&events));
    }
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    let mut handles = Vec::new();
    for i in 0..200usize {
        let permit = semaphore.clone().acquire_owned().await.unwrap();
        let url = format!("{}/v1/completions", s.base);
        let req = body(prompts[i % 4]);
        handles.push(tokio::spawn(async move {
            let _permit = permit;
            let mut r = client().post(url).json(&req).send().await.unwrap();
            assert_eq!(r.status(), 200);
            if i % 3 == 0 {
                // Hang up after a few chunks.
                for _ in 0..(i % 5) {
                    if r.chunk().await.unwrap().is_none() {
                        break;
                    }
                }
                return None;
            }
            let text = r.text().await.unwrap();
            let events: Vec<String> = text
                .split("\n\n")
                .filter(|e| !e.trim().is_empty())
                .map(|e| e.trim_start_matches("data: ").to_string())
                .collect();
            Some((i, streamed_text(&events)))
        }));
    }
    for h in handles {
        if let Some((i, text)) = h.await.unwrap() {
            assert_eq!(text, expected[i % 4], "request {i}");
        }
    }
    let mut clean = false;
    for _ in 0..100 {
        let i = info(&s).await;
        if i["requests_running"] == 0
            && i["requests_waiting"] == 0
            && i["kv_blocks_free"] == i["kv_blocks_total"]
        {
            clean = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(clean, "{}", info(&s).await);
}

/// The text of a completions stream (its `[DONE]` checked).
fn streamed_text(events: &[String]) -> String {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    events[..events.len() - 1]
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn sigterm_drains_in_flight_streams_and_exits_zero() {
    let mut s = start(&["--shutdown-timeout", "120"]);
    let body =
        json!({"prompt": "Once upon a time", "max_tokens": 40, "ignore_eos": true, "stream": true});
    let mut streams = Vec::new();
    for _ in 0..8 {
        let r = client()
            .post(format!("{}/v1/completions", s.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        streams.push(r);
    }
    let pid = s.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(blocking_status(&s.base, "/ready"), 503);
    let (status, _) = post(
        &s,
        "/v1/completions",
        json!({"prompt": "Hi", "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, 503);
    for r in streams {
        let text = r.text().await.unwrap();
        assert!(
            text.trim_end().ends_with("data: [DONE]"),
            "a stream was cut: {text}"
        );
        // All 40 tokens were generated (a chunk may carry two tokens when the first ends in
        // a partial UTF-8 character, so chunks are not counted).
        assert!(
            text.contains("\"finish_reason\":\"length\""),
            "the stream did not run to its length: {text}"
        );
    }
    let status = tokio::task::spawn_blocking(move || s.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn api_keys_guard_generation_routes_only_and_request_ids_are_echoed() {
    let s = start(&["--api-key", "sesame"]);
    let url = format!("{}/v1/chat/completions", s.base);
    let body = chat("What is 12 plus 30?", json!({"max_tokens": 4}));
    let r = client().post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "invalid_api_key");
    let r = client()
        .post(&url)
        .bearer_auth("wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .post(&url)
        .bearer_auth("sesame")
        .header("x-request-id", "my-id-42")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "my-id-42");
    for open in ["/health", "/ready", "/metrics", "/info"] {
        let r = client()
            .get(format!("{}{open}", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{open}");
        assert!(r.headers().contains_key("x-request-id"));
    }
}
