"""The `openai` Python SDK as a real client of `wick serve` on the real model.

Run by scripts/test.sh: starts the server binary on 127.0.0.1 port 0, reads the address it prints,
and exercises models, chat (whole and streamed, with usage), completions, n=2, and typed errors.
"""

import os
import subprocess
import sys

import openai

BIN = sys.argv[1]
MODEL = sys.argv[2]


def start():
    proc = subprocess.Popen(
        [BIN, "serve", "--host", "127.0.0.1", "--port", "0", "--model", MODEL,
         "--served-model-name", "smol"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith("wick: listening on "):
            return proc, line.strip().removeprefix("wick: listening on ")
    raise SystemExit("server exited before listening")


def main():
    proc, base = start()
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)

        models = client.models.list()
        assert [m.id for m in models.data] == ["smol"], models

        prompt = [{"role": "user", "content": "What is 12 plus 30?"}]
        r = client.chat.completions.create(model="smol", messages=prompt, temperature=0)
        assert r.choices[0].message.content == "12 + 30 = 32.", r
        assert r.choices[0].finish_reason == "stop"
        assert r.usage.prompt_tokens == 40 and r.usage.completion_tokens == 12, r.usage

        parts = [{"role": "user", "content": [{"type": "text", "text": "What is 12 plus 30?"}]}]
        stream = client.chat.completions.create(
            model="smol", messages=parts, temperature=0, stream=True,
            stream_options={"include_usage": True})
        text, usage, finish = "", None, None
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for c in chunk.choices:
                text += c.delta.content or ""
                finish = c.finish_reason or finish
        assert text == "12 + 30 = 32.", text
        assert finish == "stop"
        assert usage is not None and usage.total_tokens == 52, usage

        r = client.completions.create(model="smol", prompt="Once upon a time", max_tokens=5,
                                      temperature=0)
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5, r

        r = client.chat.completions.create(model="smol", messages=prompt, n=2, seed=5,
                                           temperature=1.0, max_tokens=8)
        assert len(r.choices) == 2 and [c.index for c in r.choices] == [0, 1], r

        try:
            client.chat.completions.create(model="smol", messages=prompt, temperature=7)
            raise AssertionError("temperature 7 was accepted")
        except openai.BadRequestError as e:
            assert e.status_code == 400 and "temperature" in str(e), e

        try:
            client.chat.completions.create(model="no-such-model", messages=prompt)
            raise AssertionError("an unknown model was accepted")
        except openai.NotFoundError as e:
            assert e.status_code == 404, e
        print("openai SDK checks passed")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
