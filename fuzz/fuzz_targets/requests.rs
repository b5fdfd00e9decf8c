//! Request bodies through the same parsers and checks as the routes: OpenAI chat and completion
//! requests into validation inputs, TGI's request. Anything may be refused; nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wick_router::server::openai::{ChatCompletionRequest, CompletionRequest};
use wick_router::server::tgi::GenerateRequest;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<ChatCompletionRequest>(data) {
        let _ = req.into_inputs();
    }
    if let Ok(req) = serde_json::from_slice::<CompletionRequest>(data) {
        let _ = req.into_inputs();
    }
    let _ = serde_json::from_slice::<GenerateRequest>(data);
});
