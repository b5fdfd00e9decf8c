//! Streams that outlive a drain (`--resume-key`): 8 streams (chat and completions, greedy and
//! seeded) are cut by SIGTERM with a 1 s grace period, each ends with an event carrying a resume
//! token, and each is resumed on a second server process; what the client gets, the first
//! server's chunks then the second's, equals an uninterrupted run's chunk for chunk (text,
//! log-probabilities, finish reasons, usage). An altered token is refused.

mod common;
use common::*;
use futures::StreamExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const KEY: &str = "the replicas' shared resume secret";
const TOKENS: u64 = 192;

/// The 8 streamed requests: (path, body).
fn requests() -> Vec<(&'static str, Value)> {
    (0..8)
        .map(|i| {
            let sampling = if i % 2 == 0 {
                json!({"temperature": 0})
            } else {
                json!({"temperature": 0.8, "seed": 1000 + i})
            };
            let mut body = json!({"model": "smol", "max_tokens": TOKENS, "ignore_eos": true,
                "stream": true, "stream_options": {"include_usage": true}});
            for (k, v) in sampling.as_object().unwrap() {
                body[k] = v.clone();
            }
            let topic = ["rivers", "clocks", "bread", "stars"][i as usize / 2];
            if i < 6 {
                body["messages"] =
                    json!([{"role": "user", "content": format!("Tell me about {topic}.")}]);
                body["logprobs"] = json!(true);
                body["top_logprobs"] = json!(2);
                ("/v1/chat/completions", body)
            } else {
                body["prompt"] = json!(format!("A story about {topic}:"));
                body["logprobs"] = json!(2);
                ("/v1/completions", body)
            }
        })
        .collect()
}

/// Reads an SSE response's `data:` payloads, calling `each` after every one.
async fn events(r: reqwest::Response, mut each: impl FnMut(&str)) -> Vec<String> {
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let (mut buf, mut out) = (String::new(), Vec::new());
    while let Some(chunk) = body.next().await {
        buf.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            // Keep-alive comments carry no data.
            if let Some(data) = event.trim().strip_prefix("data: ") {
                each(data);
                out.push(data.to_string());
            }
        }
    }
    out
}

async fn send(s: &Server, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", s.base))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// A chunk without what differs between two servers' runs of one request: its id, its time,
/// and how much of the prompt each server's prefix cache held.
fn comparable(data: &str) -> Value {
    if data == "[DONE]" {
        return json!("[DONE]");
    }
    let mut v: Value = serde_json::from_str(data).unwrap();
    v.as_object_mut().unwrap().remove("id");
    v.as_object_mut().unwrap().remove("created");
    if let Some(usage) = v.get_mut("usage").and_then(Value::as_object_mut) {
        let cached = usage.remove("prompt_tokens_details").unwrap();
        let cached = cached["cached_tokens"].as_u64().unwrap();
        assert!(cached <= usage["prompt_tokens"].as_u64().unwrap(), "{data}");
    }
    v
}

#[tokio::test]
async fn a_stream_cut_by_a_drain_resumes_exactly_on_another_server() {
    let cut = start(&["--resume-key", KEY, "--shutdown-timeout", "1"]);
    let other = start(&["--resume-key", KEY]);
    let other = &other;

    // The uninterrupted runs, on the second server.
    let reference =
        futures::future::join_all(requests().into_iter().map(|(path, body)| async move {
            events(send(other, path, &body).await, |_| ()).await
        }))
        .await;

    // The same streams on the first server, cut: SIGTERM once every stream has sent tokens.
    let started = Arc::new(AtomicUsize::new(0));
    let streams = futures::future::join_all(requests().into_iter().map(|(path, body)| {
        let (cut, started) = (&cut, started.clone());
        async move {
            let mut seen = 0;
            let data = events(send(cut, path, &body).await, |_| {
                seen += 1;
                if seen == 3 {
                    started.fetch_add(1, Ordering::SeqCst);
                }
            })
            .await;
            (path, data)
        }
    }));
    let terminate = async {
        while started.load(Ordering::SeqCst) < 8 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let pid = cut.child.id().to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(killed.success());
    };
    let (cut_streams, ()) = tokio::join!(streams, terminate);

    let mut tokens = Vec::new();
    for (i, ((path, mut first), whole)) in cut_streams.into_iter().zip(&reference).enumerate() {
        // The last event is the cut: OpenAI's error shape with the token.
        let last: Value = serde_json::from_str(&first.pop().unwrap()).unwrap();
        assert_eq!(last["error"]["code"], "stream_cut", "stream {i}: {last}");
        let token = last["error"]["resume_token"].as_str().unwrap().to_string();
        assert!(
            first.len() < whole.len() - 3,
            "stream {i} ({path}) finished before the cut: {} of {} events",
            first.len(),
            whole.len()
        );
        let rest = events(
            send(other, "/v1/resume", &json!({"resume_token": token})).await,
            |_| (),
        )
        .await;
        let joined: Vec<Value> = first.iter().chain(&rest).map(|d| comparable(d)).collect();
        let expected: Vec<Value> = whole.iter().map(|d| comparable(d)).collect();
        assert_eq!(joined.len(), expected.len(), "stream {i} ({path})");
        for (k, (got, want)) in joined.iter().zip(&expected).enumerate() {
            assert_eq!(
                got,
                want,
                "stream {i} ({path}), event {k} (cut after {})",
                first.len()
            );
        }
        // The resumed part keeps the first part's id.
        let id = |d: &str| serde_json::from_str::<Value>(d).unwrap()["id"].clone();
        assert_eq!(id(&first[0]), id(&rest[0]), "stream {i}");
        tokens.push(token);
    }
    let status = tokio::task::spawn_blocking({
        let mut cut = cut;
        move || cut.child.wait().unwrap()
    })
    .await
    .unwrap();
    assert!(status.success(), "the drained server exited with {status}");

    // A token altered by the client (another prompt under the old signature) is refused.
    let (body, mac) = tokens[0].split_once('.').unwrap();
    let mut altered = body.to_string();
    altered.replace_range(10..11, if &body[10..11] == "A" { "B" } else { "A" });
    let (status, e) = post(
        other,
        "/v1/resume",
        json!({"resume_token": format!("{altered}.{mac}")}),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["param"], "resume_token", "{e}");
}
