//! Constrained decoding through the real server on the real model: constrained and free requests
//! batched together, grammars with `n > 1`, and compile errors as 400s.

mod common;
use common::*;

fn schema_format() -> Value {
    json!({"type": "json_schema", "json_schema": {"name": "answer", "strict": true, "schema": {
        "type": "object",
        "properties": {"topic": {"type": "string", "maxLength": 30},
                       "score": {"type": "integer", "minimum": 1, "maximum": 10}},
        "required": ["topic", "score"]}}})
}

/// The tokens of a chat answer, from its log-probabilities.
fn tokens(body: &Value) -> Vec<String> {
    body["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap_or_else(|| panic!("no logprobs in {body}"))
        .iter()
        .map(|t| t["token"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn free_requests_batched_with_constrained_ones_get_the_tokens_they_get_alone() {
    let s = start(&["--max-batch-tokens", "64"]);
    let topics = ["the sea", "a cat", "CPUs", "rain", "music", "bread"];
    // Greedy and seeded sampling: both must be unaffected by their neighbours' masks.
    let free = |i: usize| {
        let extra = if i.is_multiple_of(2) {
            json!({"max_tokens": 24, "logprobs": true})
        } else {
            json!({"max_tokens": 24, "logprobs": true, "temperature": 0.8, "seed": i})
        };
        chat(&format!("Write two sentences about {}.", topics[i]), extra)
    };
    let constrained = |i: usize| {
        let mut body = chat(
            &format!("Rate {} from 1 to 10.", topics[i]),
            json!({"max_tokens": 40}),
        );
        body["response_format"] = match i % 3 {
            0 => schema_format(),
            1 => json!({"type": "regex", "regex": "(yes|no), [0-9]{1,2}\\."}),
            _ => json!({"type": "json_schema", "json_schema": {"name": "v", "schema": {
                "type": "object", "properties": {"verdict": {"enum": ["good", "bad"]}},
                "required": ["verdict"]}}}),
        };
        body
    };
    let mut alone = Vec::new();
    for i in 0..topics.len() {
        let (status, body) = post(&s, "/v1/chat/completions", free(i)).await;
        assert_eq!(status, 200, "{body}");
        alone.push(tokens(&body));
    }
    let before = info(&s).await["batched_steps"].as_u64().unwrap();
    let mut handles = Vec::new();
    for i in 0..topics.len() {
        for body in [constrained(i), free(i)] {
            let url = format!("{}/v1/chat/completions", s.base);
            handles.push(tokio::spawn(async move {
                let r = client().post(url).json(&body).send().await.unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            }));
        }
    }
    for (k, h) in handles.into_iter().enumerate() {
        let (status, body) = h.await.unwrap();
        assert_eq!(status, 200, "{body}");
        let i = k / 2;
        if k % 2 == 1 {
            assert_eq!(tokens(&body), alone[i], "free request {i}");
            continue;
        }
        let text = body["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
        match i % 3 {
            0 => {
                let v: Value = serde_json::from_str(text).unwrap();
                let score = v["score"].as_i64().unwrap();
                assert!((1..=10).contains(&score), "{v}");
                assert_eq!(
                    v.as_object().unwrap().len(),
                    2,
                    "strict: no other keys: {v}"
                );
            }
            1 => {
                let (word, num) = text.split_once(", ").unwrap();
                assert!(["yes", "no"].contains(&word), "{text}");
                let num = num.strip_suffix('.').unwrap();
                assert!(num.len() <= 2 && num.parse::<u32>().is_ok(), "{text}");
            }
            _ => {
                let v: Value = serde_json::from_str(text).unwrap();
                assert!(
                    ["good", "bad"].contains(&v["verdict"].as_str().unwrap()),
                    "{v}"
                );
            }
        }
    }
    let after = info(&s).await;
    assert!(after["batched_steps"].as_u64().unwrap() > before, "{after}");
}

#[tokio::test]
async fn every_choice_follows_the_grammar_and_bad_grammars_are_400s() {
    let s = start(&[]);
    let mut body = chat(
        "Pick a colour.",
        json!({"n": 3, "temperature": 1.0, "seed": 7, "max_tokens": 8}),
    );
    body["response_format"] = json!({"type": "regex", "regex": "(red|green|blue)"});
    let (status, r) = post(&s, "/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{r}");
    for c in r["choices"].as_array().unwrap() {
        let text = c["message"]["content"].as_str().unwrap();
        assert!(["red", "green", "blue"].contains(&text), "{r}");
        assert_eq!(c["finish_reason"], "stop");
    }

    let cases = [
        (
            json!({"type": "regex", "regex": "(unclosed"}),
            "response_format",
        ),
        (json!({"type": "lark", "lark": "start: nowhere"}), "nowhere"),
        (
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {
                "type": "object", "properties": {"a": {"type": "integer", "minimum": 3, "maximum": 1}},
                "required": ["a"]}}}),
            "nsatisfiable",
        ),
    ];
    for (format, needle) in cases {
        let mut body = chat("Hi", json!({}));
        body["response_format"] = format;
        let (status, r) = post(&s, "/v1/chat/completions", body).await;
        assert_eq!(status, 400, "{r}");
        assert_eq!(r["error"]["param"], "response_format", "{r}");
        let message = r["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message}");
    }
    let mut body = chat(
        "Hi",
        json!({"tool_choice": {"type": "function", "function": {"name": "f"}}}),
    );
    body["tools"] = json!([{"type": "function", "function": {"name": "g"}}]);
    let (status, r) = post(&s, "/v1/chat/completions", body).await;
    assert_eq!(status, 400, "{r}");
    assert_eq!(r["error"]["param"], "tool_choice", "{r}");
}

/// Llama 3's and Mistral's call formats (chosen by `--tool-call-format`; no catalogue model
/// teaches them): the grammar makes the model write its calls in that shape, whole and
/// streamed, and they come back as `tool_calls`.
#[tokio::test]
async fn llama3_and_mistral_calls_are_written_in_their_shape_and_read_back() {
    let weather = json!({"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                       "required": ["city"]}}});
    for (format, opening) in [
        ("llama3", "{\"name\": \"get_weather\", \"parameters\": {"),
        (
            "mistral",
            "[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {",
        ),
    ] {
        let s = start(&["--tool-call-format", format]);
        let body = chat(
            "What is the weather in Paris?",
            json!({"tools": [weather], "tool_choice": "required", "max_tokens": 60,
                   "parallel_tool_calls": false, "logprobs": true}),
        );
        let (status, r) = post(&s, "/v1/chat/completions", body.clone()).await;
        assert_eq!(status, 200, "{r}");
        let raw = tokens(&r).concat();
        assert!(raw.starts_with(opening), "{format}: {raw}");
        assert_eq!(r["choices"][0]["finish_reason"], "tool_calls", "{r}");
        let calls = r["choices"][0]["message"]["tool_calls"].as_array().unwrap();
        assert_eq!(calls[0]["function"]["name"], "get_weather", "{r}");
        let args: Value =
            serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert!(args["city"].is_string(), "{r}");
        // Streamed: the same call's name once, then its arguments in fragments.
        let mut streamed = body;
        streamed["stream"] = json!(true);
        let (mut name, mut arguments) = (String::new(), String::new());
        for event in sse(&s, "/v1/chat/completions", streamed).await {
            let Ok(chunk) = serde_json::from_str::<Value>(&event) else {
                continue;
            };
            for call in chunk["choices"][0]["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                name.push_str(call["function"]["name"].as_str().unwrap_or(""));
                arguments.push_str(call["function"]["arguments"].as_str().unwrap_or(""));
            }
        }
        assert_eq!(name, "get_weather", "{format}");
        assert_eq!(
            arguments,
            calls[0]["function"]["arguments"].as_str().unwrap(),
            "{format}"
        );
        println!("{format}: {raw}");
    }
}
