"""Tool calls in the model's own format, through the `openai` Python SDK, on Qwen2.5-Coder.

Run by scripts/test.sh with the 0.5B and the 1.5B GGUFs. Qwen's chat template teaches
`<tool_call>` tags (Hermes), so Wick constrains and reads calls in that format: the raw tokens of
a call are checked to be the tags (not Wick's bare JSON); two cities' weather gives two parallel
calls, whole and streamed (each with its own index and id, assembled by the SDK's stream helper),
and exactly one with `parallel_tool_calls=False`; `tool_choice` named, required and none are each
obeyed; the tool results go back through the template in its own format and the 1.5B answers them
in text.

Then OpenAI's Responses API (`client.responses.create`, `.stream` and `.parse`): text, a
function call (two, in order) and its `function_call_output` follow-up answered in text, a
json_schema answer parsed into a Pydantic model, the token limit as `incomplete`.

Reasoning, with a ChatML template that thinks in `<think>` (think-template.jinja; the model is
steered into a short reasoning by a Lark grammar that writes the markers): `reasoning_content`
and `content` split whole and streamed, with its `reasoning_tokens`; `chat_template_kwargs`
`enable_thinking: false` giving no reasoning, and a tool call (after optional reasoning) parsed.
The same reasoning on the agent APIs, the template opening it (`enable_thinking: true`, from
Anthropic's `thinking` and the Responses API's `reasoning.effort`): a `thinking` block and a
`reasoning` item, whole and streamed, and given back in the next turn (more prompt tokens).

Then Anthropic's Messages API through the `anthropic` SDK on the same servers: text with its
stop reasons (`end_turn`, `max_tokens`, `stop_sequence`) and usage, `tool_use` blocks (two, or
one with `disable_parallel_tool_use`), streamed text and tool inputs assembled by the SDK,
`count_tokens` agreeing with the usage, errors in Anthropic's shape, the key sent as
`x-api-key`, and a `tool_result` follow-up answered in text.
"""

import json
import sys
from pathlib import Path

import anthropic
import openai
from pydantic import BaseModel

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
                                          temperature=0, max_tokens=kw.pop("max_tokens", 120),
                                          **kw)


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


RESPONSES_WEATHER = {"type": "function", **WEATHER["function"]}
WEATHER_QUESTION = "What is the weather like in Paris and in Rome today?"


class Sum(BaseModel):
    a: int
    b: int
    total: int


def check_small_responses(client):
    r = client.responses.create(model="smol", input="What is 12 plus 30?", temperature=0,
                                max_output_tokens=40)
    assert r.status == "completed" and "42" in r.output_text, r
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0, r.usage
    print("responses:", r.output_text)
    r = client.responses.create(model="smol", input="What is 12 plus 30?", temperature=0,
                                max_output_tokens=3)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens", r
    with client.responses.stream(model="smol", input="What is 12 plus 30?", temperature=0,
                                 max_output_tokens=40) as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
        final = s.get_final_response()
    assert len(deltas) > 1 and "".join(deltas) == final.output_text, (deltas, final)
    print(f"responses stream: {len(deltas)} text deltas")

    r = client.responses.create(model="smol", input=WEATHER_QUESTION, tools=[RESPONSES_WEATHER],
                                tool_choice="required", temperature=0, max_output_tokens=120)
    calls = [o for o in r.output if o.type == "function_call"]
    assert [json.loads(c.arguments)["city"] for c in calls] == ["Paris", "Rome"], r.output
    assert len({c.call_id for c in calls}) == 2
    with client.responses.stream(model="smol", input=WEATHER_QUESTION, tools=[RESPONSES_WEATHER],
                                 tool_choice="required", temperature=0,
                                 max_output_tokens=120) as s:
        kinds = [e.type for e in s]
        final = s.get_final_response()
    streamed = [json.loads(o.arguments)["city"] for o in final.output]
    assert streamed == ["Paris", "Rome"], final.output
    assert kinds.count("response.function_call_arguments.done") == 2, kinds
    print("responses: function calls whole and streamed")

    parsed = client.responses.parse(
        model="smol", input="Add 12 and 30. Give a, b and their total.", text_format=Sum,
        temperature=0, max_output_tokens=60)
    assert isinstance(parsed.output_parsed, Sum), parsed
    print("responses.parse:", parsed.output_parsed)


def check_large_responses(client):
    r = client.responses.create(model="smol", input=WEATHER_QUESTION, tools=[RESPONSES_WEATHER],
                                tool_choice="required", temperature=0, max_output_tokens=120)
    calls = [o for o in r.output if o.type == "function_call"]
    results = {"Paris": "sunny, 24 C", "Rome": "rain, 18 C"}
    follow = [{"role": "user", "content": WEATHER_QUESTION}] + [
        {"type": "function_call", "call_id": c.call_id, "name": c.name,
         "arguments": c.arguments} for c in calls] + [
        {"type": "function_call_output", "call_id": c.call_id,
         "output": results[json.loads(c.arguments)["city"]]} for c in calls]
    r = client.responses.create(model="smol", input=follow, tools=[RESPONSES_WEATHER],
                                tool_choice="none", temperature=0, max_output_tokens=120)
    assert "24" in r.output_text and "18" in r.output_text, r.output_text
    print("responses follow-up:", r.output_text)


ANTHROPIC_WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": WEATHER["function"]["parameters"],
}
SUM = [{"role": "user", "content": "What is 12 plus 30?"}]
SUM_QUESTION = SUM
# This SDK has no sampling parameters of its own; Wick reads Anthropic's fields from the body.
GREEDY = {"temperature": 0}


def check_small_anthropic(client):
    m = client.messages.create(model="smol", max_tokens=40, extra_body=GREEDY, messages=SUM)
    assert m.type == "message" and m.role == "assistant", m
    assert m.stop_reason == "end_turn", m
    assert m.content[0].type == "text" and "42" in m.content[0].text, m.content
    assert m.usage.input_tokens > 0 and m.usage.output_tokens > 0, m.usage
    print("messages:", m.content[0].text, m.usage)
    m = client.messages.create(model="smol", max_tokens=3, extra_body=GREEDY, messages=SUM)
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 3, m
    m = client.messages.create(model="smol", max_tokens=40, extra_body=GREEDY, messages=SUM,
                               stop_sequences=["equals"])
    assert m.stop_reason == "stop_sequence" and "equals" not in m.content[0].text, m
    assert m.stop_sequence == "equals", m
    count = client.messages.count_tokens(model="smol", messages=SUM)
    first = client.messages.create(model="smol", max_tokens=4, messages=SUM)
    assert count.input_tokens == first.usage.input_tokens, (count, first.usage)

    weather = [{"role": "user", "content": "What is the weather like in Paris and in Rome today?"}]
    m = client.messages.create(model="smol", max_tokens=120, extra_body=GREEDY, messages=weather,
                               tools=[ANTHROPIC_WEATHER], tool_choice={"type": "any"})
    assert m.stop_reason == "tool_use", m
    assert [(b.type, b.name, b.input) for b in m.content] == [
        ("tool_use", "get_weather", {"city": "Paris"}),
        ("tool_use", "get_weather", {"city": "Rome"})], m.content
    m = client.messages.create(
        model="smol", max_tokens=120, extra_body=GREEDY, messages=weather, tools=[ANTHROPIC_WEATHER],
        tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert len(m.content) == 1, m.content
    print("tool_use blocks: two, then one without parallel use")

    with client.messages.stream(model="smol", max_tokens=120, extra_body=GREEDY, messages=weather,
                                tools=[ANTHROPIC_WEATHER], tool_choice={"type": "any"}) as s:
        final = s.get_final_message()
    assert [b.input for b in final.content] == [{"city": "Paris"}, {"city": "Rome"}], final
    assert final.stop_reason == "tool_use"
    with client.messages.stream(model="smol", max_tokens=40, extra_body=GREEDY, messages=SUM) as s:
        pieces = list(s.text_stream)
        final = s.get_final_message()
    assert len(pieces) > 1 and "".join(pieces) == final.content[0].text, pieces
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    print(f"streamed: tool inputs assembled, text in {len(pieces)} deltas")

    try:
        client.messages.create(model="smol", max_tokens=40, messages=SUM,
                               extra_body={"temperature": 5})
        raise AssertionError("a temperature of 5 was accepted")
    except anthropic.BadRequestError as e:
        assert e.body["type"] == "error", e.body
        assert e.body["error"]["type"] == "invalid_request_error", e.body
        assert "temperature" in e.body["error"]["message"], e.body
    try:
        client.messages.create(model="claude-x", max_tokens=4, messages=SUM)
        raise AssertionError("an unknown model was accepted")
    except anthropic.NotFoundError as e:
        assert e.body["error"]["type"] == "not_found_error", e.body
    print("errors in Anthropic's shape")


def check_large_anthropic(client, base):
    weather = [{"role": "user", "content": "What is the weather like in Paris and in Rome today?"}]
    m = client.messages.create(model="smol", max_tokens=120, extra_body=GREEDY, messages=weather,
                               tools=[ANTHROPIC_WEATHER], tool_choice={"type": "any"})
    results = {"Paris": "sunny, 24 C", "Rome": "rain, 18 C"}
    follow = weather + [
        {"role": "assistant", "content": [b.model_dump() for b in m.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": b.id,
             "content": f"{b.input['city']}: {results[b.input['city']]}"} for b in m.content]}]
    m = client.messages.create(model="smol", max_tokens=120, extra_body=GREEDY, messages=follow,
                               tools=[ANTHROPIC_WEATHER], tool_choice={"type": "none"})
    text = m.content[0].text
    assert m.stop_reason == "end_turn" and "24" in text and "18" in text, m
    print("tool_result follow-up:", text)
    wrong = anthropic.Anthropic(base_url=base, api_key="wrong", max_retries=0)
    try:
        wrong.messages.create(model="smol", max_tokens=4, messages=SUM)
        raise AssertionError("a wrong key was accepted")
    except anthropic.AuthenticationError as e:
        assert e.body["error"]["type"] == "authentication_error", e.body
    print("x-api-key checked")


THINK = ('start: "<think>" /[a-z][a-z ,.]{8,60}/ "</think>\\n\\n" ANSWER\n'
         'ANSWER: /[0-9]{1,4}/\n')


def check_reasoning(client):
    fmt = {"type": "lark", "lark": THINK}
    r = ask(client, messages=SUM_QUESTION, response_format=fmt, max_tokens=100)
    m = r.choices[0].message
    thought = m.model_extra["reasoning_content"]
    assert thought and "<think>" not in thought and "</think>" not in thought, m
    assert m.content.isdigit(), m
    print(f"reasoning: {thought!r} -> content {m.content!r}")
    details = r.usage.completion_tokens_details
    assert 0 < details.reasoning_tokens < r.usage.completion_tokens, r.usage
    print(f"reasoning tokens: {details.reasoning_tokens} of {r.usage.completion_tokens}")
    stream = client.chat.completions.create(
        model="smol", messages=SUM_QUESTION, response_format=fmt, max_tokens=100, temperature=0,
        stream=True)
    thoughts, answer = [], []
    for chunk in stream:
        d = chunk.choices[0].delta if chunk.choices else None
        if d is not None:
            thoughts.append((d.model_extra or {}).get("reasoning_content") or "")
            answer.append(d.content or "")
    assert "".join(thoughts) == thought and "".join(answer) == m.content, (thoughts, answer)
    assert sum(1 for t in thoughts if t) > 1, thoughts
    print(f"reasoning streamed in {sum(1 for t in thoughts if t)} deltas")
    # enable_thinking false: the template writes an empty reasoning; the answer is all content.
    # enable_thinking false: the template writes an empty reasoning into the prompt (more
    # prompt tokens) and the answer is all content.
    plain = ask(client, messages=SUM_QUESTION, max_tokens=30)
    r = ask(client, messages=SUM_QUESTION, max_tokens=30,
            extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    m = r.choices[0].message
    assert m.model_extra.get("reasoning_content") is None and m.content, m
    assert r.usage.prompt_tokens > plain.usage.prompt_tokens, (r.usage, plain.usage)
    print("enable_thinking=false:", repr(m.content), r.usage.prompt_tokens, "prompt tokens, not",
          plain.usage.prompt_tokens)
    r = ask(client, tools=[WEATHER], tool_choice="required", max_tokens=120)
    m = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls" and m.tool_calls, m
    assert all(c in ("Paris", "Rome") for c in cities(m.tool_calls)), m
    print("tool calls after (optional) reasoning parse:", cities(m.tool_calls),
          "reasoning:", repr(m.model_extra.get("reasoning_content")))


def check_reasoning_agent_apis(base):
    # Anthropic: `thinking` enabled opens the reasoning in the prompt; the answer (cut at
    # max_tokens) starts with a thinking block.
    client = anthropic.Anthropic(base_url=base, api_key="none", max_retries=0)
    kw = dict(model="smol", max_tokens=24, messages=SUM, extra_body={"temperature": 0.0},
              thinking={"type": "enabled", "budget_tokens": 16})
    m = client.messages.create(**kw)
    assert m.content and m.content[0].type == "thinking" and m.content[0].thinking, m
    thought = m.content[0].thinking
    with client.messages.stream(**kw) as stream:
        deltas = [e.delta.thinking for e in stream
                  if e.type == "content_block_delta" and e.delta.type == "thinking_delta"]
        final = stream.get_final_message()
    assert "".join(deltas) == thought and len(deltas) > 1, (deltas, thought)
    assert final.content[0].type == "thinking" and final.content[0].thinking == thought, final
    print(f"anthropic thinking block: {thought!r}, streamed in {len(deltas)} deltas")
    # Given back, the thinking block is in the prompt (the template shows it).
    turn = [{"role": "user", "content": "What is 12 plus 30?"},
            {"role": "assistant", "content": [{"type": "text", "text": "42"}]},
            {"role": "user", "content": "And 1 plus 1?"}]
    bare = client.messages.count_tokens(model="smol", messages=turn).input_tokens
    turn[1]["content"].insert(0, {"type": "thinking", "thinking": thought, "signature": ""})
    shown = client.messages.count_tokens(model="smol", messages=turn).input_tokens
    assert shown > bare, (shown, bare)
    print(f"thinking block given back: {shown} input tokens, not {bare}")
    # Responses: `reasoning.effort` opens it too; a reasoning item comes first.
    oai = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
    kw = dict(model="smol", input="What is 12 plus 30?", max_output_tokens=24, temperature=0,
              reasoning={"effort": "low"})
    r = oai.responses.create(**kw)
    item = r.output[0]
    assert item.type == "reasoning" and item.content and item.content[0].text, r.output
    text = item.content[0].text
    reasoning_tokens = r.usage.output_tokens_details.reasoning_tokens
    assert 0 < reasoning_tokens <= r.usage.output_tokens, r.usage
    with oai.responses.stream(**kw) as stream:
        deltas = [e.delta for e in stream if e.type == "response.reasoning_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == text and final.output[0].content[0].text == text, (deltas, final)
    assert final.usage.output_tokens_details.reasoning_tokens == reasoning_tokens, final.usage
    print(f"responses reasoning item: {text!r} ({reasoning_tokens} of {r.usage.output_tokens} "
          f"tokens), streamed in {len(deltas)} deltas")
    follow = [{"role": "user", "content": "What is 12 plus 30?"},
              {"type": "reasoning", "id": item.id, "summary": [],
               "content": [{"type": "reasoning_text", "text": text}]},
              {"role": "assistant", "content": "42"},
              {"role": "user", "content": "And 1 plus 1?"}]
    with_item = oai.responses.create(model="smol", input=follow, max_output_tokens=1)
    without = oai.responses.create(model="smol", input=follow[:1] + follow[2:],
                                   max_output_tokens=1)
    assert with_item.usage.input_tokens > without.usage.input_tokens, (with_item.usage,
                                                                       without.usage)
    print(f"reasoning item given back: {with_item.usage.input_tokens} input tokens, not "
          f"{without.usage.input_tokens}")


def main():
    key = "sk-agent-test"
    for model, check, check_anthropic in [(SMALL, check_small, None),
                                          (LARGE, check_large, check_large_anthropic)]:
        extra = ["--kv-cache-memory", "128"] + (["--api-key", key] if model == LARGE else [])
        proc, base = start(BIN, model, *extra)
        try:
            oai = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
            check(oai)
            if model == SMALL:
                check_small_responses(oai)
            else:
                check_large_responses(oai)
            client = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
            if check_anthropic is None:
                check_small_anthropic(client)
            else:
                check_anthropic(client, base)
        finally:
            proc.terminate()
            proc.wait()
    template = str(Path(__file__).with_name("think-template.jinja"))
    proc, base = start(BIN, SMALL, "--kv-cache-memory", "128", "--chat-template", template,
                       "--tool-call-format", "hermes")
    try:
        check_reasoning(openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0))
        check_reasoning_agent_apis(base)
    finally:
        proc.terminate()
        proc.wait()
    print("agent tool checks passed")


if __name__ == "__main__":
    main()
