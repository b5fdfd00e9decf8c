//! The real server (`wick serve` on 127.0.0.1:0 with the real SmolLM2 model), talked to over HTTP:
//! OpenAI chat and completions (whole and streamed, with exact SSE framing), TGI's generate API,
//! errors, continuous batching, cancellation on disconnect and stop strings.

mod common;
use common::*;

#[tokio::test]
async fn chat_and_completions_whole_and_streamed() {
    let s = start(&[]);
    let (status, body) = post(
        &s,
        "/v1/chat/completions",
        chat("What is 12 plus 30?", json!({})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "smol");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], "12 + 30 = 32.");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 40);
    assert_eq!(body["usage"]["completion_tokens"], 12);
    assert_eq!(body["usage"]["total_tokens"], 52);

    // Streamed: role chunk, content deltas, finish chunk, usage chunk, [DONE].
    let events = sse(
        &s,
        "/v1/chat/completions",
        chat(
            "What is 12 plus 30?",
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        ),
    )
    .await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert!(chunks.iter().all(|c| c["id"] == chunks[0]["id"]));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let n = chunks.len();
    assert_eq!(chunks[n - 2]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[n - 2]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[n - 1]["choices"], json!([]));
    assert_eq!(chunks[n - 1]["usage"]["completion_tokens"], 12);
    assert!(chunks[..n - 1].iter().all(|c| c["usage"].is_null()));
    let text: String = chunks[1..n - 2]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, "12 + 30 = 32.");

    // Chat log-probabilities: one entry per token, with the requested alternatives.
    let (status, body) = post(
        &s,
        "/v1/chat/completions",
        chat(
            "What is 12 plus 30?",
            json!({"logprobs": true, "top_logprobs": 3}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let content = body["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    assert_eq!(content.len(), 12);
    assert_eq!(content[0]["token"], "1");
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 3);
    assert_eq!(content[0]["top_logprobs"][0]["token"], "1");
    let health = client()
        .get(format!("{}/health", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // Completions, with n = 2 seeded sampling and logprobs.
    let (status, body) = post(
        &s,
        "/v1/completions",
        json!({"model": "smol", "prompt": "Once upon a time", "max_tokens": 6, "n": 2, "seed": 3, "temperature": 0.9, "logprobs": 2}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"].as_array().unwrap().len(), 2);
    assert_eq!(body["choices"][1]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 12);
    let lp = &body["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 6);
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);

    let events = sse(
        &s,
        "/v1/completions",
        json!({"prompt": "Once upon a time", "max_tokens": 5, "stream": true, "temperature": 0}),
    )
    .await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn a_list_of_prompts_gives_choices_indexed_across_them_with_echo() {
    let s = start(&[]);
    let prompts = json!(["Once upon a time", "The capital of France is"]);
    let one = |p: &str| json!({"prompt": p, "max_tokens": 5, "temperature": 0});
    let (_, a) = post(&s, "/v1/completions", one("Once upon a time")).await;
    let (_, b) = post(&s, "/v1/completions", one("The capital of France is")).await;
    let request = json!({"prompt": prompts, "max_tokens": 5, "n": 2, "temperature": 0,
        "echo": true});
    let (status, body) = post(&s, "/v1/completions", request.clone()).await;
    assert_eq!(status, 200, "{body}");
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        let (prompt, alone) = if i < 2 {
            ("Once upon a time", &a)
        } else {
            ("The capital of France is", &b)
        };
        let want = format!("{prompt}{}", alone["choices"][0]["text"].as_str().unwrap());
        assert_eq!(c["text"], want.as_str());
    }
    let prompt_tokens = a["usage"]["prompt_tokens"].as_u64().unwrap()
        + b["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(body["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(body["usage"]["completion_tokens"], 20);

    // Streamed: the same texts per index, echo first.
    let mut streamed = request;
    streamed["stream"] = json!(true);
    let events = sse(&s, "/v1/completions", streamed).await;
    let mut texts = vec![String::new(); 4];
    for e in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(e).unwrap();
        let c = &chunk["choices"][0];
        texts[c["index"].as_u64().unwrap() as usize] += c["text"].as_str().unwrap();
    }
    for (i, t) in texts.iter().enumerate() {
        assert_eq!(t, choices[i]["text"].as_str().unwrap(), "choice {i}");
    }
    // Echo cannot give the prompt's log-probabilities: refused by name.
    let bad = json!({"prompt": "Hi", "max_tokens": 2, "echo": true, "logprobs": 1});
    let (status, body) = post(&s, "/v1/completions", bad).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "echo");
}

#[tokio::test]
async fn streamed_completion_text_offsets_match_the_whole_answer() {
    let s = start(&[]);
    let request = json!({"prompt": "Once upon a time", "max_tokens": 8, "n": 2, "seed": 5,
        "temperature": 0.8, "logprobs": 1});
    let (status, body) = post(&s, "/v1/completions", request.clone()).await;
    assert_eq!(status, 200, "{body}");
    let mut streamed = request;
    streamed["stream"] = json!(true);
    let events = sse(&s, "/v1/completions", streamed).await;
    for choice in 0..2 {
        let whole = &body["choices"][choice]["logprobs"];
        let (mut offsets, mut tokens) = (Vec::new(), Vec::new());
        for e in &events[..events.len() - 1] {
            let chunk: Value = serde_json::from_str(e).unwrap();
            let c = &chunk["choices"][0];
            if c["index"] == choice && !c["logprobs"].is_null() {
                offsets.extend(c["logprobs"]["text_offset"].as_array().unwrap().clone());
                tokens.extend(c["logprobs"]["tokens"].as_array().unwrap().clone());
            }
        }
        assert_eq!(tokens.len(), 8, "choice {choice}");
        assert_eq!(&Value::from(tokens), &whole["tokens"], "choice {choice}");
        assert_eq!(&Value::from(offsets.clone()), &whole["text_offset"]);
        // Each offset is the bytes of the tokens before it: 0, then strictly growing.
        assert_eq!(offsets[0], 0);
        assert!(
            offsets.windows(2).all(|w| w[0].as_u64() < w[1].as_u64()),
            "{offsets:?}"
        );
    }
}

#[tokio::test]
async fn tgi_generate_and_generate_stream() {
    let s = start(&[]);
    let body = json!({"inputs": "The capital of France is", "parameters": {"max_new_tokens": 6, "details": true}});
    let (status, whole) = post(&s, "/generate", body.clone()).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["details"]["generated_tokens"], 6);
    assert_eq!(whole["details"]["finish_reason"], "length");
    assert_eq!(whole["details"]["tokens"].as_array().unwrap().len(), 6);
    let events = sse(&s, "/generate_stream", body).await;
    assert_eq!(events.len(), 6);
    let parsed: Vec<Value> = events
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(parsed[..5].iter().all(|e| e["generated_text"].is_null()));
    assert_eq!(parsed[5]["generated_text"], whole["generated_text"]);
    assert_eq!(parsed[5]["details"]["finish_reason"], "length");
    let streamed: String = parsed
        .iter()
        .map(|e| e["token"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, whole["generated_text"].as_str().unwrap());
}

#[tokio::test]
async fn errors_are_openai_shaped() {
    let s = start(&["--max-total-tokens", "256"]);
    let (status, body) = post(
        &s,
        "/v1/chat/completions",
        chat("hi", json!({"temperature": 3})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "temperature");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let (status, body) = post(
        &s,
        "/v1/chat/completions",
        chat("hi", json!({"tools": [{}]})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "tools[0].type", "{body}");
    let (status, body) = post(
        &s,
        "/v1/chat/completions",
        chat("hi", json!({"model": "gpt-4"})),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "model_not_found");
    let (status, body) = post(&s, "/v1/chat/completions", json!({"model": "smol"})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "messages");
    let long = "word ".repeat(400);
    let (status, body) = post(
        &s,
        "/v1/completions",
        json!({"prompt": long, "max_tokens": 10}),
    )
    .await;
    assert_eq!(status, 400);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("401 tokens") && message.contains("255"),
        "{message}"
    );
    let (status, body) = post(
        &s,
        "/v1/completions",
        json!({"prompt": "hi", "max_tokens": 300}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    let r = client()
        .get(format!("{}/v1/nothing", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // The server is still fine.
    let (status, _) = post(
        &s,
        "/v1/completions",
        json!({"prompt": "hi", "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn concurrent_requests_batch_and_match_sequential_outputs() {
    concurrent_outputs_match_sequential(&["--max-batch-tokens", "64"], 16).await;
}

#[tokio::test]
async fn time_budgeted_chunks_keep_outputs_exact() {
    // A target no step meets: beside decodes, one prompt a step is prefilled, 16 tokens of it.
    concurrent_outputs_match_sequential(&["--target-inter-token-ms", "1"], 8).await;
}

/// `n` chat requests give the same text sent at once as one by one, on a server with `flags`,
/// and some of its steps batched several sequences.
async fn concurrent_outputs_match_sequential(flags: &[&str], n: usize) {
    let s = start(flags);
    let prompts: Vec<(String, u64)> = (0..n)
        .map(|i| {
            let topic = [
                "the sea", "a cat", "CPUs", "rain", "music", "bread", "stars", "trees",
            ][i % 8];
            (
                format!("Write {} short sentences about {topic}.", 1 + i % 3),
                8 + (i as u64 * 5) % 24,
            )
        })
        .collect();
    let request = |p: &(String, u64)| chat(&p.0, json!({"max_tokens": p.1}));
    let mut sequential = Vec::new();
    for p in &prompts {
        let (status, body) = post(&s, "/v1/chat/completions", request(p)).await;
        assert_eq!(status, 200);
        sequential.push(body["choices"][0]["message"]["content"].clone());
    }
    let before = info(&s).await["batched_steps"].as_u64().unwrap();
    let handles: Vec<_> = prompts
        .iter()
        .map(|p| {
            let body = request(p);
            let url = format!("{}/v1/chat/completions", s.base);
            tokio::spawn(async move {
                let r = client().post(url).json(&body).send().await.unwrap();
                let v: Value = r.json().await.unwrap();
                v["choices"][0]["message"]["content"].clone()
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.await.unwrap(), sequential[i], "request {i}");
    }
    let after = info(&s).await;
    assert!(after["batched_steps"].as_u64().unwrap() > before, "{after}");
}

#[tokio::test]
async fn a_client_that_disconnects_frees_its_sequence() {
    let s = start(&[]);
    let total = info(&s).await["kv_blocks_total"].as_u64().unwrap();
    let body = chat(
        "Tell me a very long story.",
        json!({"stream": true, "max_tokens": 2000, "ignore_eos": true}),
    );
    let mut r = client()
        .post(format!("{}/v1/chat/completions", s.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    // Read a few chunks, then hang up.
    for _ in 0..3 {
        r.chunk().await.unwrap().unwrap();
    }
    assert_eq!(info(&s).await["requests_running"], 1);
    drop(r);
    let mut freed = false;
    for _ in 0..100 {
        let i = info(&s).await;
        if i["requests_running"] == 0 && i["kv_blocks_free"].as_u64() == Some(total) {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(freed, "the sequence was not freed: {}", info(&s).await);
}

#[tokio::test]
async fn a_stop_string_spanning_tokens_is_never_partly_streamed() {
    let s = start(&[]);
    // Greedy output is "12 + 30 = 32." with "3" and "0" separate tokens.
    for (stop, want) in [("30", "12 + "), ("+ 3", "12 ")] {
        let events = sse(
            &s,
            "/v1/chat/completions",
            chat(
                "What is 12 plus 30?",
                json!({"stream": true, "stop": [stop]}),
            ),
        )
        .await;
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let pieces: Vec<&str> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(pieces.concat(), want, "stop {stop:?}");
        let finish = &chunks.last().unwrap()["choices"][0]["finish_reason"];
        assert_eq!(finish, "stop");
    }
}

#[tokio::test]
async fn preemption_by_recompute_keeps_outputs_exact() {
    // 4 MiB of f16 KV is 11 blocks of 16 tokens: six concurrent requests of about 70 tokens each
    // cannot all hold their blocks, so running sequences get preempted and recomputed.
    let s = start(&["--kv-cache-memory", "4", "--max-batch-tokens", "256"]);
    assert_eq!(info(&s).await["kv_blocks_total"], 11);
    let prompts: Vec<String> = (0..6)
        .map(|i| format!("Write a short poem about the number {i}."))
        .collect();
    let request = |p: &str| chat(p, json!({"max_tokens": 30, "ignore_eos": true}));
    let mut sequential = Vec::new();
    for p in &prompts {
        let (status, body) = post(&s, "/v1/chat/completions", request(p)).await;
        assert_eq!(status, 200, "{body}");
        sequential.push(body["choices"][0]["message"]["content"].clone());
    }
    let handles: Vec<_> = prompts
        .iter()
        .map(|p| {
            let body = request(p);
            let url = format!("{}/v1/chat/completions", s.base);
            tokio::spawn(async move {
                let r = client().post(url).json(&body).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let v: Value = r.json().await.unwrap();
                v["choices"][0]["message"]["content"].clone()
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.await.unwrap(), sequential[i], "request {i}");
    }
    let after = info(&s).await;
    assert!(after["preemptions"].as_u64().unwrap() > 0, "{after}");
    assert_eq!(after["kv_blocks_free"], 11);
}
