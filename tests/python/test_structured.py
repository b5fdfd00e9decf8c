"""Structured output and tool calling on the real model, through the `openai` Python SDK.

Run by scripts/test.sh: 20 prompts with a `json_schema` response format whose outputs must parse
and validate (Python's `jsonschema`, not Wick's code); `client.chat.completions.parse` with a
Pydantic model; a tool call with `tool_choice="required"` whose arguments the SDK parses; a
streamed tool call assembled by the SDK's stream helper; regex and Lark formats; TGI's `grammar`.
"""

import json
import sys
import urllib.request
from typing import List, Literal, Optional

import jsonschema
import openai
from pydantic import BaseModel, Field

from wickserver import start

BIN = sys.argv[1]
MODEL = sys.argv[2]

STR = {"type": "string", "maxLength": 40}

# (prompt, schema, strict): objects, arrays, enums, bounded numbers, nested and optional fields.
CASES = [
    ("Describe a person named Alice who is 30.",
     {"type": "object", "properties": {"name": STR, "age": {"type": "integer", "minimum": 0, "maximum": 130}},
      "required": ["name", "age"]}, True),
    ("Give the capital of France and its population.",
     {"type": "object", "properties": {"city": STR, "population": {"type": "integer", "minimum": 1, "maximum": 100000000}},
      "required": ["city", "population"]}, True),
    ("Is the sky blue? Answer with a boolean and a reason.",
     {"type": "object", "properties": {"answer": {"type": "boolean"}, "reason": STR},
      "required": ["answer", "reason"]}, True),
    ("List three fruits.",
     {"type": "object", "properties": {"fruits": {"type": "array", "items": STR, "minItems": 3, "maxItems": 3}},
      "required": ["fruits"]}, True),
    ("What is the sentiment of 'I love this movie'?",
     {"type": "object", "properties": {"sentiment": {"enum": ["positive", "negative", "neutral"]}},
      "required": ["sentiment"]}, True),
    ("Rate the movie Titanic from 1 to 5 stars.",
     {"type": "object", "properties": {"title": STR, "stars": {"type": "integer", "minimum": 1, "maximum": 5}},
      "required": ["title", "stars"]}, True),
    ("Give a temperature in Celsius for a warm summer day.",
     {"type": "object", "properties": {"celsius": {"type": "number", "minimum": -50, "maximum": 60}},
      "required": ["celsius"]}, False),
    ("Describe a book with its author.",
     {"type": "object", "properties": {
         "title": STR,
         "author": {"type": "object", "properties": {"first": STR, "last": STR}, "required": ["first", "last"]}},
      "required": ["title", "author"]}, True),
    ("Give a user profile; the nickname is optional.",
     {"type": "object", "properties": {"username": STR, "nickname": STR, "active": {"type": "boolean"}},
      "required": ["username", "active"]}, True),
    ("List two colors with their hex codes.",
     {"type": "object", "properties": {"colors": {"type": "array", "maxItems": 2, "minItems": 2, "items": {
         "type": "object", "properties": {"name": STR, "hex": {"type": "string", "pattern": "^#[0-9a-f]{6}$"}},
         "required": ["name", "hex"]}}},
      "required": ["colors"]}, True),
    ("Give the coordinates of a point in the first quadrant.",
     {"type": "object", "properties": {"x": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
                                        "y": {"type": "number", "exclusiveMinimum": 0, "maximum": 100}},
      "required": ["x", "y"]}, True),
    ("Classify the animal 'dog'.",
     {"type": "object", "properties": {"animal": STR, "class": {"enum": ["mammal", "bird", "fish", "reptile"]},
                                        "legs": {"type": "integer", "enum": [0, 2, 4, 6, 8]}},
      "required": ["animal", "class", "legs"]}, True),
    ("Give a list of up to 4 prime numbers below 20.",
     {"type": "array", "items": {"type": "integer", "minimum": 2, "maximum": 19}, "minItems": 1, "maxItems": 4},
     False),
    ("Write a short todo item with a priority.",
     {"type": "object", "properties": {"task": STR, "priority": {"enum": ["low", "medium", "high"]},
                                        "done": {"type": "boolean"}},
      "required": ["task", "priority", "done"]}, True),
    ("Give an address in London.",
     {"type": "object", "properties": {"street": STR, "city": {"const": "London"},
                                        "postcode": {"type": "string", "pattern": "^[A-Z]{1,2}[0-9]{1,2} [0-9][A-Z]{2}$"}},
      "required": ["street", "city", "postcode"]}, True),
    ("Describe an order with items and a total price.",
     {"type": "object", "properties": {
         "items": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
             "type": "object", "properties": {"name": STR, "qty": {"type": "integer", "minimum": 1, "maximum": 10}},
             "required": ["name", "qty"]}},
         "total": {"type": "number", "minimum": 0, "maximum": 1000}},
      "required": ["items", "total"]}, True),
    ("Answer: what is 2 plus 2?",
     {"type": "object", "properties": {"result": {"type": "integer", "minimum": 0, "maximum": 10}},
      "required": ["result"]}, True),
    ("Give a date in ISO format for new year's day 2024.",
     {"type": "object", "properties": {"date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}},
      "required": ["date"]}, True),
    ("Describe the weather: condition and optional wind speed.",
     {"type": "object", "properties": {"condition": {"enum": ["sunny", "cloudy", "rainy", "snowy"]},
                                        "wind_kmh": {"type": ["number", "null"], "minimum": 0, "maximum": 200}},
      "required": ["condition"]}, False),
    ("Give a matrix of 2 rows of 2 small integers.",
     {"type": "object", "properties": {"rows": {"type": "array", "minItems": 2, "maxItems": 2, "items": {
         "type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "integer", "minimum": -9, "maximum": 9}}}},
      "required": ["rows"]}, True),
]


class Person(BaseModel):
    name: str = Field(max_length=30)
    age: int = Field(ge=0, le=130)
    hobbies: List[str] = Field(max_length=3)


class Weather(BaseModel):
    city: str = Field(max_length=30)
    unit: Literal["celsius", "fahrenheit"]


class Add(BaseModel):
    a: float
    b: float
    note: Optional[str] = None


def main():
    proc, base = start(BIN, MODEL)
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)

        assert len(CASES) == 20
        for i, (prompt, schema, strict) in enumerate(CASES):
            jsonschema.Draft202012Validator.check_schema(schema)
            r = client.chat.completions.create(
                model="smol", messages=[{"role": "user", "content": prompt}], temperature=0,
                max_tokens=200,
                response_format={"type": "json_schema",
                                 "json_schema": {"name": f"case{i}", "schema": schema, "strict": strict}})
            choice = r.choices[0]
            assert choice.finish_reason == "stop", (i, choice)
            value = json.loads(choice.message.content)
            jsonschema.validate(value, schema, cls=jsonschema.Draft202012Validator)
            print(f"schema {i:2}: {choice.message.content}")

        r = client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": "Describe a cat as JSON with its name and color."}],
            temperature=0, max_tokens=200, response_format={"type": "json_object"})
        assert isinstance(json.loads(r.choices[0].message.content), dict), r

        # The SDK builds a strict schema from the Pydantic model and parses the answer into it.
        r = client.chat.completions.parse(
            model="smol", temperature=0, max_tokens=200, response_format=Person,
            messages=[{"role": "user", "content": "Describe Bob, a 41 year old who likes chess."}])
        person = r.choices[0].message.parsed
        assert isinstance(person, Person) and 0 <= person.age <= 130, r
        print("parse:", person)

        tools = [openai.pydantic_function_tool(Weather, name="get_weather",
                                               description="Current weather in a city"),
                 openai.pydantic_function_tool(Add, name="add", description="Add two numbers")]
        question = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]
        r = client.chat.completions.parse(model="smol", temperature=0, max_tokens=100,
                                          messages=question, tools=tools, tool_choice="required")
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        call = choice.message.tool_calls[0]
        assert call.function.name in ("get_weather", "add"), call
        assert isinstance(call.function.parsed_arguments, (Weather, Add)), call
        print("tool call:", call.function.name, call.function.parsed_arguments)

        # A named function, and the conversation continued with the tool's result.
        r = client.chat.completions.create(
            model="smol", temperature=0, max_tokens=100, messages=question, tools=tools,
            tool_choice={"type": "function", "function": {"name": "add"}})
        call = r.choices[0].message.tool_calls[0]
        assert call.function.name == "add" and r.choices[0].finish_reason == "tool_calls", r
        Add.model_validate_json(call.function.arguments)
        follow = question + [
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "18 degrees, sunny"},
        ]
        r = client.chat.completions.create(model="smol", temperature=0, max_tokens=30,
                                           messages=follow, tools=tools, tool_choice="none")
        assert r.choices[0].message.content and not r.choices[0].message.tool_calls, r

        # Streamed: the SDK assembles the call from its deltas.
        with client.chat.completions.stream(model="smol", temperature=0, max_tokens=100,
                                            messages=question, tools=tools,
                                            tool_choice="required") as stream:
            deltas = sum(1 for e in stream if e.type == "tool_calls.function.arguments.delta")
            final = stream.get_final_completion()
        call = final.choices[0].message.tool_calls[0]
        assert final.choices[0].finish_reason == "tool_calls", final
        assert deltas > 1, deltas
        assert isinstance(call.function.parsed_arguments, (Weather, Add)), call
        print(f"streamed tool call in {deltas} deltas:", call.function.arguments)

        # With `auto` the answer is text or a call; either way it is well formed.
        r = client.chat.completions.create(model="smol", temperature=0, max_tokens=60,
                                           messages=question, tools=tools, tool_choice="auto")
        m = r.choices[0].message
        assert (m.tool_calls and r.choices[0].finish_reason == "tool_calls") or m.content, r

        r = client.chat.completions.create(
            model="smol", temperature=0, max_tokens=20,
            messages=[{"role": "user", "content": "What is your favourite colour?"}],
            response_format={"type": "regex", "regex": "(red|green|blue)!"})
        assert r.choices[0].message.content in ("red!", "green!", "blue!"), r

        r = client.chat.completions.create(
            model="smol", temperature=0, max_tokens=30,
            messages=[{"role": "user", "content": "Say yes or no, twice."}],
            response_format={"type": "lark", "lark": 'start: word ", " word\nword: "yes" | "no"'})
        assert r.choices[0].message.content in ("yes, yes", "yes, no", "no, yes", "no, no"), r

        try:
            client.chat.completions.create(
                model="smol", messages=question,
                response_format={"type": "json_schema", "json_schema": {
                    "name": "bad", "schema": {"type": "object", "properties": {
                        "a": {"type": "integer", "minimum": 5, "maximum": 2}}, "required": ["a"]}}})
            raise AssertionError("an unsatisfiable schema was accepted")
        except openai.BadRequestError as e:
            assert e.status_code == 400 and "unsatisfiable" in str(e).lower(), e

        body = json.dumps({"inputs": "The answer is", "parameters": {
            "max_new_tokens": 10, "grammar": {"type": "regex", "value": " (yes|no)\\."}}}).encode()
        req = urllib.request.Request(f"{base}/generate", body, {"content-type": "application/json"})
        with urllib.request.urlopen(req) as resp:
            text = json.load(resp)["generated_text"]
        assert text in (" yes.", " no."), text
        print("structured output checks passed")
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
