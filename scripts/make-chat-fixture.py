#!/usr/bin/env python3
"""Writes fixtures/chat-<name>.json: llama.cpp's greedy output (temperature 0) for a set of chat
prompts on one catalogue model, as llama-server gives it: the GGUF's chat template applied to one
user message with the generation prompt (`/apply-template`), then `/completion` with the token
ids returned. The engine tests teacher-force Wick with these ids (router/tests/engine_real.rs);
CI never builds llama.cpp.

    scripts/make-chat-fixture.py qwen2.5-coder-0.5b
"""

import sys

from llama_peer import fetch, llama_server, post, write_fixture

PROMPTS = [
    "Write a haiku about the sea.",
    "Explain what a CPU does in one sentence.",
    "What is 12 plus 30?",
    "Write a Python function that returns the factorial of n.",
    "What is the capital of France? Answer in one word.",
    "List three primary colors.",
]
MAX_TOKENS = 40


def main():
    name = sys.argv[1]
    model, digest = fetch(name)
    cases = []
    with llama_server(model, "-c", "2048", "--jinja") as base:
        for prompt in PROMPTS:
            text = post(base, "/apply-template",
                        {"messages": [{"role": "user", "content": prompt}]})["prompt"]
            out = post(base, "/completion", {
                "prompt": text, "n_predict": MAX_TOKENS, "temperature": 0, "top_k": 1,
                "return_tokens": True, "cache_prompt": False, "seed": 0})
            cases.append({
                "prompt": prompt,
                "ids": out["tokens"],
                "text": out["content"],
                "finish_reason": "length" if len(out["tokens"]) >= MAX_TOKENS else "stop",
                "prompt_tokens": out["tokens_evaluated"],
            })
    write_fixture("chat", name,
                  f"llama.cpp greedy decoding (temperature 0) on {model.rsplit('/', 1)[-1]}, "
                  f"sha256 {digest}...; prompt = the GGUF chat template applied to one user "
                  f"message with add_generation_prompt (llama-server --jinja); ids = generated "
                  f"token ids, at most {MAX_TOKENS} (EOS included when it stopped)", cases)


if __name__ == "__main__":
    main()
