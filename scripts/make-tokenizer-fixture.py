#!/usr/bin/env python3
"""Writes fixtures/tokenize-<name>.json: llama.cpp's token ids for a varied set of strings, as
llama-server's /tokenize gives them (add_special false, control-token text parsed), for one
catalogue model. Run once per model; CI compares Wick's tokenizer with the fixture and never
builds llama.cpp.

    scripts/make-tokenizer-fixture.py qwen2.5-coder-0.5b
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

CASES = [
    "Hello world!",
    "  leading spaces and trailing  ",
    "naïve café résumé Zürich",
    "emoji 😀🚀👍🏽 and a family 👨‍👩‍👧",
    "tabs\tand\nnewlines\r\n",
    "https://example.com/path?q=1&x=2#frag",
    "   ",
    "",
    "def f(x):\n\treturn x**2  # square\n",
    "The year 2024 had 366 days; 1234567890 and 3.14159.",
    "mixedCASEWordsAndCamelCase snake_case_words SCREAMING_CASE",
    "Zero\u200bwidth and non\u00a0breaking spaces",
    "中文分词测试：你好，世界！",
    "日本語のテキストとカタカナ",
    "한국어 문장입니다.",
    "Русский текст и ёлка",
    "مرحبا بالعالم",
    "हिन्दी पाठ",
    "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
    "if (a && b || !c) { x += 1; } else { y -= 2; }",
    "    indented\n        more indented\n",
    "many     spaces\n\n\n\nand blank lines",
    "<|im_start|>user\nhi<|im_end|>",
    "<|endoftext|> looks special",
    "<think>not a token here</think>",
    "a" * 64,
    "!!!???...,,,;;;",
    "'quoted' \"double\" `back` 's 't 're 've 'm 'll 'd",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    name = sys.argv[1]
    model = subprocess.run([ROOT / "scripts/fetch-model.sh", name], check=True,
                           capture_output=True, text=True).stdout.strip()
    server = subprocess.run([ROOT / "scripts/build-llama-server.sh"], check=True,
                            capture_output=True, text=True).stdout.strip()
    digest = hashlib.sha256(pathlib.Path(model).read_bytes()).hexdigest()
    port = free_port()
    proc = subprocess.Popen([server, "-m", model, "--host", "127.0.0.1", "--port", str(port),
                             "-c", "512", "-t", "2"],
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
        for text in CASES:
            body = json.dumps({"content": text, "add_special": False}).encode()
            req = urllib.request.Request(f"{base}/tokenize", data=body,
                                         headers={"content-type": "application/json"})
            with urllib.request.urlopen(req) as r:
                cases.append({"text": text, "ids": json.load(r)["tokens"]})
    finally:
        proc.terminate()
        proc.wait()
    out = ROOT / "fixtures" / f"tokenize-{name}.json"
    out.write_text(json.dumps({
        "source": f"llama.cpp tokenizer (llama-server /tokenize, add_special false) on "
                  f"{pathlib.Path(model).name}, sha256 {digest[:8]}...",
        "cases": cases,
    }, indent=1, ensure_ascii=False) + "\n")
    print(out)


if __name__ == "__main__":
    main()
