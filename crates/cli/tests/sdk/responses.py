"""The official openai SDK's Responses API against a running Cocoon client (issue 21 §4).

`client.responses.create` whole and streamed (the raw events, in OpenAI's order, with
consecutive sequence numbers), the SDK's own stream helper (which checks the events against
each other), a stored-state request refused with a 400 naming its field, and the model's
`capabilities` in `/v1/models`.

usage: responses.py BASE_URL MODEL
"""

import sys

import openai
from openai import OpenAI

base, model = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
ask = dict(
    model=model,
    input="Say hello.",
    instructions="Answer in one short sentence.",
    max_output_tokens=24,
)

# Whole: a response object, with the receipt header beside it.
raw = client.responses.with_raw_response.create(**ask)
rid = raw.headers.get("x-cocoon-receipt")
assert rid and len(rid) == 64, dict(raw.headers)
r = raw.parse()
assert r.object == "response" and r.id.startswith("resp_"), r
assert r.status in ("completed", "incomplete"), r
if r.status == "incomplete":
    assert r.incomplete_details.reason == "max_output_tokens", r
assert r.output[0].type == "message" and r.output[0].role == "assistant", r
assert r.output_text.strip(), r
u = r.usage
assert u.input_tokens > 0 and u.output_tokens > 0, u
assert u.total_tokens == u.input_tokens + u.output_tokens, u
assert u.output_tokens <= 24, u

# Streamed: the events as the SDK yields them.
types, deltas, final = [], [], None
for n, ev in enumerate(client.responses.create(**ask, stream=True)):
    assert ev.sequence_number == n, (n, ev)
    types.append(ev.type)
    if ev.type == "response.output_text.delta":
        deltas.append(ev.delta)
    if ev.type in ("response.completed", "response.incomplete"):
        final = ev.response
assert types[:4] == [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
], types
assert len(deltas) > 1, types
tail = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
assert types[-4:-1] == tail, types
assert types[-1] == "response." + final.status, (types, final.status)
text = "".join(deltas)
assert final.output_text == text and text.strip(), (final, text)
assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0, final.usage

# The SDK's stream helper accumulates the events and checks them against each other.
with client.responses.stream(**ask) as s:
    helper = [ev.type for ev in s]
    if helper[-1] == "response.completed":
        done = s.get_final_response()
        assert done.status == "completed" and done.output_text.strip(), done
    else:
        assert helper[-1] == "response.incomplete", helper

# Stateless: asking to store is a 400 naming the field.
try:
    client.responses.create(**ask, store=True)
    raise AssertionError("store=True was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and e.body["param"] == "store", e.body

# What the embedded engine does not serve (a schema keyword it does not convert, in a format
# or a tool) is refused before any work, in the Responses request's terms.
refusals = [
    (
        "tools[0].parameters",
        dict(tools=[{"type": "function", "name": "f",
                     "parameters": {"type": "object",
                                    "properties": {"d": {"type": "string", "format": "date"}}}}]),
    ),
    (
        "text.format",
        dict(text={"format": {"type": "json_schema", "name": "x",
                              "schema": {"type": "string", "format": "email"}}}),
    ),
]
for param, extra in refusals:
    try:
        client.responses.create(**ask, **extra)
        raise AssertionError(f"{param} was accepted")
    except openai.BadRequestError as e:
        assert e.body["param"] == param, (param, e.body)

# What the model supports.
m = client.models.retrieve(model).to_dict()
caps = m["capabilities"]
assert caps["chat"] is True and caps["completions"] is True, m
assert caps["logprobs"] is True and caps["json_schema"] is True, m
assert caps["tools"] is True, m
for k in ("embeddings", "vision"):
    assert caps[k] is False, (k, m)
print("responses", r.status, final.status, helper[-1], len(deltas), "deltas")
