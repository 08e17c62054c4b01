"""The official openai SDK meets Cocoon's refusals as it meets OpenAI's (issue 21 §2).

Through a running Cocoon client, streamed and whole: a parameter the serving engine does not
take (`echo`, `best_of`), or takes only within limits (`n` over its slots, a `logit_bias`
token outside its vocabulary, a `json_schema` keyword it does not convert) is
`openai.BadRequestError` (400) naming it in `param`, with OpenAI's `code`; a prompt plus `max_tokens` over
the context is a 400 `context_length_exceeded` whose message states the context length that
`/v1/models` reports for the model; `null` content, missing content, an image part and an
`input_audio` part sent to the text-only model are 400s naming the message. Every error keeps
OpenAI's shape (`type` invalid_request_error) and none is billed: the client's `/jsonstats`
totals (spent and tokens) are the same after all of them.

usage: errors.py BASE_URL MODEL
"""

import json
import sys
import urllib.request

import openai
from openai import OpenAI

base, model = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)


def totals():
    with urllib.request.urlopen(base + "/jsonstats") as r:
        t = json.load(r)["totals"]
    return t.get("spent_nanoton", 0), t.get("tokens", 0)


# The context length the model list reports.
listed = {m.id: m.to_dict() for m in client.models.list()}
ctx = listed[model].get("context_length")
assert isinstance(ctx, int) and ctx > 0, listed[model]
before = totals()
refused = 0


def refused_with(call, param, code=None, within=None):
    """Runs `call` whole and streamed; each is a 400 BadRequestError naming `param`."""
    global refused
    for stream in (False, True):
        try:
            r = call(stream)
            if stream:
                list(r)
            raise AssertionError(f"accepted (param {param}, stream={stream})")
        except openai.BadRequestError as e:
            what = (param, stream, e.body)
            assert e.status_code == 400, what
            assert e.type == "invalid_request_error", what
            assert e.body["param"] == param and e.param == param, what
            assert "proxy " not in e.body["message"], what
            if code is not None:
                assert e.code == code, what
            if within is not None:
                assert e.body["message"].startswith(within), what
            refused += 1


def chat(messages, **kw):
    kw.setdefault("max_tokens", 16)
    return lambda stream: client.chat.completions.create(
        model=model, messages=messages, stream=stream, **kw
    )


def legacy(**kw):
    return lambda stream: client.completions.create(
        model=model, prompt="Hello", max_tokens=16, stream=stream, **kw
    )


hi = [{"role": "user", "content": "Hi"}]
# Parameters the embedded engine does not take.
refused_with(legacy(echo=True), "echo", "unsupported_parameter")
refused_with(legacy(best_of=2), "best_of", "unsupported_parameter")
refused_with(chat(hi, n=100), "n", "invalid_value")
refused_with(chat(hi, logit_bias={"4000000": 1}), "logit_bias", "invalid_value")
email = {"type": "json_schema",
         "json_schema": {"name": "x", "schema": {"type": "string", "format": "email"}}}
refused_with(chat(hi, response_format=email), "response_format", "unsupported_value")
date_tool = [{"type": "function", "function": {"name": "f", "parameters": {
    "type": "object", "properties": {"d": {"type": "string", "format": "date"}}}}}]
refused_with(chat(hi, tools=date_tool), "tools[0].function.parameters", "unsupported_value")
# Over the context: the completion limit alone, and a long prompt with a small one.
limit = f"This model's maximum context length is {ctx} tokens. However, you requested "
refused_with(chat(hi, max_tokens=ctx), "messages", "context_length_exceeded", limit)
long = [{"role": "user", "content": "word " * (ctx + 100)}]
refused_with(chat(long), "messages", "context_length_exceeded", limit)
refused_with(
    lambda stream: client.completions.create(
        model=model, prompt="word " * (ctx + 100), max_tokens=16, stream=stream
    ),
    "prompt",
    "context_length_exceeded",
    limit,
)
# Content the text-only model cannot take.
refused_with(chat([{"role": "user", "content": None}]), "messages[0].content")
refused_with(chat([{"role": "user"}]), "messages[0].content")
image = [{"role": "user", "content": [
    {"type": "text", "text": "What is in this picture?"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
]}]
refused_with(chat(image), "messages[0].content[1]")
audio = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
    ]},
]
refused_with(chat(audio), "messages[1].content[0]")

after = totals()
assert after == before, f"errors were billed: {before} -> {after}"
# The same client still answers, and that is billed: the check above can fail.
ok = client.chat.completions.create(model=model, messages=hi, max_tokens=4)
assert ok.choices[0].message.content is not None, ok
assert totals()[0] > after[0], "an answer was not billed"
print("errors:", refused, "refusals, billed nothing; context length", ctx)
