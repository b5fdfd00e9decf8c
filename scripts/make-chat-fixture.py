#!/usr/bin/env python3
"""Writes fixtures/chat-<name>.json: llama.cpp's greedy output (temperature 0) for a set of chat
prompts on one catalogue model, as llama-server gives it: the GGUF's chat template applied to one
user message with the generation prompt (`/apply-template`), then `/completion` with the token
ids returned. The engine tests teacher-force Wick with these ids (router/tests/engine_real.rs);
CI never builds llama.cpp.

    scripts/make-chat-fixture.py qwen2.5-coder-0.5b
"""

import hashlib
import json
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROMPTS = [
    "Write a haiku about the sea.",
    "Explain what a CPU does in one sentence.",
    "What is 12 plus 30?",
    "Write a Python function that returns the factorial of n.",
    "What is the capital of France? Answer in one word.",
    "List three primary colors.",
]
MAX_TOKENS = 40


def post(base, path, body):
    req = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)


def main():
    name = sys.argv[1]
    model = subprocess.run([ROOT / "scripts/fetch-model.sh", name], check=True,
                           capture_output=True, text=True).stdout.strip()
    server = subprocess.run([ROOT / "scripts/build-llama-server.sh"], check=True,
                            capture_output=True, text=True).stdout.strip()
    digest = hashlib.sha256(pathlib.Path(model).read_bytes()).hexdigest()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([server, "-m", model, "--host", "127.0.0.1", "--port", str(port),
                             "-c", "2048", "-t", "2", "--jinja"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"{base}/health") as r:
                    if r.status == 200:
                        break
            except Exception:
                time.sleep(0.2)
        cases = []
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
    finally:
        proc.terminate()
        proc.wait()
    out = ROOT / "fixtures" / f"chat-{name}.json"
    out.write_text(json.dumps({
        "source": f"llama.cpp greedy decoding (temperature 0) on {pathlib.Path(model).name}, "
                  f"sha256 {digest[:8]}...; prompt = the GGUF chat template applied to one user "
                  f"message with add_generation_prompt (llama-server --jinja); ids = generated "
                  f"token ids, at most {MAX_TOKENS} (EOS included when it stopped)",
        "cases": cases,
    }, indent=1, ensure_ascii=False) + "\n")
    print(out)


if __name__ == "__main__":
    main()
