"""The official openai SDK's tool calls against a running Cocoon client (issue 21 §1).

`client.chat.completions.create(tools=…, tool_choice="required")` whole and streamed (the
call assembled from the deltas as SDK users do, its arguments parsed with json.loads), the
SDK's `client.chat.completions.stream` helper, a second turn with the tool's result that
answers in text, and `client.responses.create(tools=…)` giving a `function_call` item, whole
and streamed.

usage: tools.py BASE_URL MODEL
"""

import json
import sys

from openai import OpenAI

base, model = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
params = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 32}},
    "required": ["city"],
    "additionalProperties": False,
}
tools = [{"type": "function", "function": {"name": "get_weather",
                                           "description": "The weather in a city now",
                                           "parameters": params}}]
question = [{"role": "user", "content": "What is the weather in Paris?"}]
ask = dict(model=model, messages=question, tools=tools, tool_choice="required",
           parallel_tool_calls=False, max_tokens=40, temperature=0)


def check(name, arguments):
    assert name == "get_weather", name
    args = json.loads(arguments)
    assert set(args) == {"city"} and isinstance(args["city"], str), args


# Whole.
r = client.chat.completions.create(**ask)
c = r.choices[0]
assert c.finish_reason == "tool_calls", c
assert c.message.content is None and len(c.message.tool_calls) == 1, c.message
call = c.message.tool_calls[0]
assert call.id.startswith("call_") and call.type == "function", call
check(call.function.name, call.function.arguments)
assert 0 < r.usage.completion_tokens <= 40, r.usage

# Streamed: the call assembled from its deltas.
calls, finish, usage = {}, None, None
for chunk in client.chat.completions.create(**ask, stream=True,
                                            stream_options={"include_usage": True}):
    usage = chunk.usage or usage
    for ch in chunk.choices:
        finish = ch.finish_reason or finish
        for tc in ch.delta.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
            if tc.id:
                assert slot["id"] is None and tc.type == "function", tc
                slot["id"], slot["name"] = tc.id, tc.function.name
            slot["arguments"] += tc.function.arguments or ""
assert finish == "tool_calls", finish
assert list(calls) == [0], calls
assert calls[0]["id"].startswith("call_"), calls
check(calls[0]["name"], calls[0]["arguments"])
assert calls[0]["arguments"] == call.function.arguments, (calls, call)
assert usage.completion_tokens == r.usage.completion_tokens, (usage, r.usage)

# The SDK's stream helper accumulates the call itself.
with client.chat.completions.stream(**ask) as s:
    kinds = {ev.type for ev in s}
    final = s.get_final_completion()
assert "tool_calls.function.arguments.done" in kinds, kinds
fc = final.choices[0].message.tool_calls[0]
check(fc.function.name, fc.function.arguments)

# The second turn: the call and its result in the conversation; the answer is text.
turn = question + [
    {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
    {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"},
]
r2 = client.chat.completions.create(model=model, messages=turn, tools=tools, max_tokens=24,
                                    temperature=0)
assert r2.choices[0].message.content and not r2.choices[0].message.tool_calls, r2
assert r2.choices[0].finish_reason in ("stop", "length"), r2

# The Responses API: a function_call output item, whole and streamed.
rtools = [{"type": "function", "name": "get_weather", "description": "The weather in a city now",
           "parameters": params}]
rask = dict(model=model, input="What is the weather in Paris?", tools=rtools,
            tool_choice="required", parallel_tool_calls=False, max_output_tokens=40,
            temperature=0)
resp = client.responses.create(**rask)
items = [o for o in resp.output if o.type == "function_call"]
assert len(items) == 1 and resp.status == "completed", resp
assert items[0].call_id.startswith("call_"), items
check(items[0].name, items[0].arguments)
deltas, done = [], None
for ev in client.responses.create(**rask, stream=True):
    if ev.type == "response.function_call_arguments.delta":
        deltas.append(ev.delta)
    elif ev.type == "response.function_call_arguments.done":
        done = ev.arguments
assert deltas and "".join(deltas) == done == items[0].arguments, (deltas, done, items)
print("tools", call.function.arguments, len(calls), "call,", len(deltas), "argument deltas")
