"""The `openai` Python SDK as a real client of `wick serve` on the real model.

Run by scripts/test.sh: starts the server binary on 127.0.0.1 port 0, reads the address it prints,
and exercises models, chat (whole and streamed, with usage), completions, n=2, and typed errors.
"""

import sys
import urllib.request

import openai
from prometheus_client.parser import text_string_to_metric_families

from wickserver import start

BIN = sys.argv[1]
MODEL = sys.argv[2]


def main():
    proc, base = start(BIN, MODEL)
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)

        models = client.models.list()
        assert [m.id for m in models.data] == ["smol"], models

        prompt = [{"role": "user", "content": "What is 12 plus 30?"}]
        # What the server's counters must show at the end: finished sequences, prompt and
        # generated tokens, failures by reason.
        expected = {"success": 0, "prompt": 0, "generated": 0, "validation": 0, "not_found": 0}

        def count(usage, choices):
            expected["success"] += choices
            expected["prompt"] += usage.prompt_tokens
            expected["generated"] += usage.completion_tokens

        r = client.chat.completions.create(model="smol", messages=prompt, temperature=0)
        count(r.usage, 1)
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
        count(usage, 1)

        r = client.completions.create(model="smol", prompt="Once upon a time", max_tokens=5,
                                      temperature=0)
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5, r
        count(r.usage, 1)

        r = client.chat.completions.create(model="smol", messages=prompt, n=2, seed=5,
                                           temperature=1.0, max_tokens=8)
        assert len(r.choices) == 2 and [c.index for c in r.choices] == [0, 1], r
        count(r.usage, 2)

        try:
            client.chat.completions.create(model="smol", messages=prompt, temperature=7)
            raise AssertionError("temperature 7 was accepted")
        except openai.BadRequestError as e:
            assert e.status_code == 400 and "temperature" in str(e), e
            expected["validation"] += 1

        try:
            client.chat.completions.create(model="no-such-model", messages=prompt)
            raise AssertionError("an unknown model was accepted")
        except openai.NotFoundError as e:
            assert e.status_code == 404, e
            expected["not_found"] += 1
        check_metrics(base, expected)
        print("openai SDK and metrics checks passed")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def check_metrics(base, expected):
    """Parses /metrics as Prometheus exposition and compares the counters with what was done."""
    with urllib.request.urlopen(f"{base}/metrics") as r:
        text = r.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            samples[key] = s.value

    def total(name, **labels):
        return sum(v for (n, l), v in samples.items()
                   if n == name and all(dict(l).get(k) == want for k, want in labels.items()))

    assert total("wick_request_success_total") == expected["success"], samples
    assert total("wick_prompt_tokens_total") == expected["prompt"], expected
    assert total("wick_generation_tokens_total") == expected["generated"], expected
    assert total("wick_request_failure_total", reason="validation") == expected["validation"]
    assert total("wick_request_failure_total", reason="not_found") == expected["not_found"]
    assert total("wick_time_to_first_token_seconds_count") == expected["success"]
    assert total("wick_e2e_request_latency_seconds_count") == expected["success"]
    assert total("wick_requests_running") == 0 and total("wick_requests_waiting") == 0
    assert total("wick_kv_cache_usage_ratio") == 0
    assert total("wick_kv_cache_blocks_total") > 0


if __name__ == "__main__":
    main()
