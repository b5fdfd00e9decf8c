"""Tool calls in the model's own format, through the `openai` Python SDK, on Qwen2.5-Coder.

Run by scripts/test.sh with the 0.5B and the 1.5B GGUFs. Qwen's chat template teaches
`<tool_call>` tags (Hermes), so Wick constrains and reads calls in that format: the raw tokens of
a call are checked to be the tags (not Wick's bare JSON); two cities' weather gives two parallel
calls, whole and streamed (each with its own index and id, assembled by the SDK's stream helper),
and exactly one with `parallel_tool_calls=False`; `tool_choice` named, required and none are each
obeyed; the tool results go back through the template in its own format and the 1.5B answers them
in text.
"""

import json
import sys

import openai

from wickserver import start

BIN = sys.argv[1]
SMALL = sys.argv[2]
LARGE = sys.argv[3]

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current local time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}
QUESTION = [{"role": "user", "content": "What is the weather like in Paris and in Rome today?"}]


def ask(client, **kw):
    return client.chat.completions.create(model="smol", messages=kw.pop("messages", QUESTION),
                                          temperature=0, max_tokens=120, **kw)


def cities(calls):
    return [json.loads(c.function.arguments)["city"] for c in calls]


def check_small(client):
    # Required: both cities, in Qwen's tags; ids unique.
    r = ask(client, tools=[WEATHER], tool_choice="required")
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_weather"], calls
    assert cities(calls) == ["Paris", "Rome"], calls
    assert len({c.id for c in calls}) == 2
    print("required: two parallel calls", cities(calls))

    # The same answer streamed: the SDK assembles two calls by index.
    with client.beta.chat.completions.stream(
            model="smol", messages=QUESTION, tools=[WEATHER], tool_choice="required",
            temperature=0, max_tokens=120) as stream:
        deltas = [e for e in stream if e.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion()
    streamed = final.choices[0].message.tool_calls
    assert final.choices[0].finish_reason == "tool_calls"
    assert cities(streamed) == ["Paris", "Rome"], streamed
    assert {d.index for d in deltas} == {0, 1}, deltas
    assert len(deltas) > 4, "arguments must stream in pieces"
    print(f"streamed: {len(deltas)} argument deltas over calls 0 and 1")

    # parallel_tool_calls=False: exactly one call. The raw tokens are Qwen's tags.
    r = ask(client, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False,
            logprobs=True)
    assert len(r.choices[0].message.tool_calls) == 1, r.choices[0].message
    tokens = [t.token for t in r.choices[0].logprobs.content]
    assert tokens[0] == "<tool_call>" and "</tool_call>" in tokens, tokens
    assert tokens[1] == "\n" and tokens[2].startswith("{"), tokens
    print("raw call tokens:", "".join(tokens[:8]), "...")

    # Named: only that tool, though another is offered.
    r = ask(client, tools=[WEATHER, TIME],
            tool_choice={"type": "function", "function": {"name": "get_time"}})
    names = {c.function.name for c in r.choices[0].message.tool_calls}
    assert names == {"get_time"}, r.choices[0].message
    print("named: get_time only")

    # None: text, no calls.
    r = ask(client, tools=[WEATHER], tool_choice="none")
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    print("none: text")

    # Auto: either text or well-formed calls, never a half-parsed mix.
    r = ask(client, tools=[WEATHER])
    m = r.choices[0].message
    assert (m.tool_calls is None) != (m.content is None), m
    print("auto:", "calls" if m.tool_calls else "text")


def check_large(client):
    r = ask(client, tools=[WEATHER], tool_choice="required")
    calls = r.choices[0].message.tool_calls
    assert cities(calls) == ["Paris", "Rome"], calls
    results = {"Paris": "sunny, 24 C", "Rome": "rain, 18 C"}
    messages = QUESTION + [r.choices[0].message.model_dump(exclude_none=True)] + [
        {"role": "tool", "tool_call_id": c.id,
         "content": f"{json.loads(c.function.arguments)['city']}: "
                    f"{results[json.loads(c.function.arguments)['city']]}"}
        for c in calls]
    r = ask(client, messages=messages, tools=[WEATHER], tool_choice="none")
    text = r.choices[0].message.content
    assert r.choices[0].message.tool_calls is None
    assert "24" in text and "18" in text, text
    print("follow-up with tool results:", text)


def main():
    for model, check in [(SMALL, check_small), (LARGE, check_large)]:
        proc, base = start(BIN, model, "--kv-cache-memory", "128")
        try:
            check(openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0))
        finally:
            proc.terminate()
            proc.wait()
    print("agent tool checks passed")


if __name__ == "__main__":
    main()
