//! Request priorities on the real model (`priority`, as vLLM's: lower first): with one running
//! slot, an urgent request that arrives after ten others of a lower priority is served next,
//! not last; every generation route takes a priority, and an out-of-range one is a 400 naming
//! the field.

mod common;
use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[tokio::test]
async fn an_urgent_request_overtakes_the_queue() {
    let s = start(&["--max-running-sequences", "1"]);
    let done = Arc::new(AtomicUsize::new(0));
    let send = |priority: i64| {
        let (s, done) = (&s, done.clone());
        async move {
            let body = json!({"prompt": "Once upon a time", "max_tokens": 32,
                              "ignore_eos": true, "temperature": 0, "priority": priority});
            let (status, r) = post(s, "/v1/completions", body).await;
            assert_eq!(status, 200, "{r}");
            done.fetch_add(1, Ordering::SeqCst)
        }
    };
    let low = futures::future::join_all((0..10).map(|_| send(5)));
    let urgent = async {
        // Sent once the ten are queued (one of them running).
        tokio::time::sleep(Duration::from_millis(300)).await;
        send(-1).await
    };
    let (lows, rank) = tokio::join!(low, urgent);
    let before = lows.iter().filter(|&&r| r < rank).count();
    println!("finished after {before} of the ten");
    assert!(
        before <= 3,
        "the urgent request waited for {before} of the ten"
    );
}

#[tokio::test]
async fn a_priority_out_of_range_is_a_400_naming_it() {
    let s = start(&[]);
    let body = json!({"prompt": "Hi", "max_tokens": 1, "priority": 1u64 << 40});
    let (status, r) = post(&s, "/v1/completions", body).await;
    assert_eq!(status, 400, "{r}");
    assert_eq!(r["error"]["param"], "priority", "{r}");
    let body = chat("Hi", json!({"max_tokens": 1, "priority": -3}));
    assert_eq!(post(&s, "/v1/chat/completions", body).await.0, 200);
    // Every generation route takes it: Anthropic's messages, OpenAI's responses, TGI's generate.
    let messages = |p: Value| {
        json!({"max_tokens": 1, "priority": p,
                                    "messages": [{"role": "user", "content": "Hi"}]})
    };
    let responses = |p: Value| json!({"input": "Hi", "max_output_tokens": 1, "priority": p});
    let tgi =
        |p: Value| json!({"inputs": "Hi", "parameters": {"max_new_tokens": 1, "priority": p}});
    for (path, body) in [
        ("/v1/messages", &messages as &dyn Fn(Value) -> Value),
        ("/v1/responses", &responses),
        ("/generate", &tgi),
    ] {
        let (status, r) = post(&s, path, body(json!(1u64 << 40))).await;
        assert_eq!(status, 400, "{path}: {r}");
        assert!(r.to_string().contains("priority"), "{path}: {r}");
        let (status, r) = post(&s, path, body(json!(-3))).await;
        assert_eq!(status, 200, "{path}: {r}");
    }
}
