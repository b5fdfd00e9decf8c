#!/usr/bin/env python3
"""Writes fixtures/chat-<name>.json: llama.cpp's greedy output (temperature 0) for a set of chat
prompts on one catalogue model, as llama-server gives it: the GGUF's chat template applied to one
user message with the generation prompt (`/apply-template`), then `/completion` with the token
ids returned. The engine tests teacher-force Wick with these ids (backend/tests/engine_real.rs);
CI never builds llama.cpp.

Each case keeps the prompt's ids as llama.cpp tokenizes them (`prompt_ids`), so that the backend's
engine tests need no chat template (backend/tests/engine_real.rs) while the router's checks its
own rendering against them (router/tests/chat_prompts.rs). With `--raw` (base models without a
chat template, such as Gemma 3 270M) the prompts are plain text instead, one of them longer than
512 tokens (Gemma's sliding window), tokenized with `add_special` (BOS first).
`--prompt-ids` adds the prompt ids to an existing chat fixture without generating again.

    scripts/make-chat-fixture.py qwen2.5-coder-0.5b
    scripts/make-chat-fixture.py --raw gemma3-270m
    scripts/make-chat-fixture.py --prompt-ids smollm2-135m chat-ref.json
"""

import json
import sys

from llama_peer import ROOT, fetch, llama_server, post, write_fixture


def templated_ids(base, prompt):
    """The chat template applied to one user message, tokenized as `/completion` does."""
    text = post(base, "/apply-template",
                {"messages": [{"role": "user", "content": prompt}]})["prompt"]
    return text, post(base, "/tokenize", {"content": text, "add_special": True,
                                          "parse_special": True})["tokens"]


def add_prompt_ids(name, fixture):
    model, _ = fetch(name)
    path = ROOT / "fixtures" / fixture
    data = json.loads(path.read_text())
    with llama_server(model, "-c", "2048", "--jinja") as base:
        for case in data["cases"]:
            ids = templated_ids(base, case["prompt"])[1]
            assert len(ids) == case["prompt_tokens"], (case["prompt"], len(ids))
            case["prompt_ids"] = ids
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(path)

PROMPTS = [
    "Write a haiku about the sea.",
    "Explain what a CPU does in one sentence.",
    "What is 12 plus 30?",
    "Write a Python function that returns the factorial of n.",
    "What is the capital of France? Answer in one word.",
    "List three primary colors.",
]
MAX_TOKENS = 40

WORDS = ["heron", "lighthouse", "orchard", "glacier", "market", "violin", "comet", "bridge"]
RAW_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village by the sea,",
    "The three primary colors are",
    "Water boils at a temperature of",
    "import numpy as np\n\n# Compute the mean of a list of numbers\n",
    # About 620 tokens: the last queries reach past the 512-token window.
    " ".join(f"On day {i + 1}, the traveler walked {(i * 7) % 13 + 2} miles and wrote a note "
             f"about the {WORDS[i % len(WORDS)]} she saw." for i in range(30))
    + " At the end of the journey she read every note again and concluded that",
]


def main():
    if sys.argv[1] == "--prompt-ids":
        return add_prompt_ids(sys.argv[2], sys.argv[3])
    raw = sys.argv[1] == "--raw"
    name = sys.argv[-1]
    model, digest = fetch(name)
    cases = []
    with llama_server(model, "-c", "2048", "--jinja") as base:
        for prompt in RAW_PROMPTS if raw else PROMPTS:
            if raw:
                prompt_ids = post(base, "/tokenize",
                                  {"content": prompt, "add_special": True})["tokens"]
                body = {"prompt": prompt_ids}
            else:
                text, prompt_ids = templated_ids(base, prompt)
                body = {"prompt": text}
            out = post(base, "/completion", {
                **body, "n_predict": MAX_TOKENS, "temperature": 0, "top_k": 1,
                "return_tokens": True, "cache_prompt": False, "seed": 0})
            case = {
                "prompt": prompt,
                "ids": out["tokens"],
                "text": out["content"],
                "finish_reason": "length" if len(out["tokens"]) >= MAX_TOKENS else "stop",
                "prompt_tokens": out["tokens_evaluated"],
            }
            case["prompt_ids"] = prompt_ids
            cases.append(case)
    what = ("the plain text, tokenized with BOS (prompt_ids)" if raw else
            "the GGUF chat template applied to one user message with add_generation_prompt "
            "(llama-server --jinja)")
    write_fixture("chat", name,
                  f"llama.cpp greedy decoding (temperature 0) on {model.rsplit('/', 1)[-1]}, "
                  f"sha256 {digest}...; prompt = {what}; ids = generated "
                  f"token ids, at most {MAX_TOKENS} (EOS included when it stopped)", cases)


if __name__ == "__main__":
    main()
