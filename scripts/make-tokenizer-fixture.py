#!/usr/bin/env python3
"""Writes fixtures/tokenize-<name>.json: llama.cpp's token ids for a varied set of strings, as
llama-server's /tokenize gives them (add_special false, control-token text parsed), for one
catalogue model. Run once per model; CI compares Wick's tokenizer with the fixture and never
builds llama.cpp.

    scripts/make-tokenizer-fixture.py qwen2.5-coder-0.5b
"""

import sys

from llama_peer import fetch, llama_server, post, write_fixture

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
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "<b>bold</b> and <table><tr><td>cell</td></tr></table>",
    "\u0001\u0007 control bytes and a rare 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ꙮ",
    "aaaa bbbbbbbb ▁▁ already-escaped ▁spaces",
    "\t\tdouble tab\n\n\ndouble newline  two  spaces",
]


def main():
    name = sys.argv[1]
    model, digest = fetch(name)
    with llama_server(model, "-c", "512") as base:
        cases = [{"text": text,
                  "ids": post(base, "/tokenize", {"content": text, "add_special": False})["tokens"]}
                 for text in CASES]
    write_fixture("tokenize", name,
                  f"llama.cpp tokenizer (llama-server /tokenize, add_special false) on "
                  f"{model.rsplit('/', 1)[-1]}, sha256 {digest}...", cases)


if __name__ == "__main__":
    main()
