"""The official openai SDK drives the embedded engine's request surface (issue 21 §1).

Through a running Cocoon client, each feature streamed and whole: `n=2` (two choices), chat
`logprobs` with `top_logprobs` and the legacy `completions.create(logprobs=2)` (every logprob
at most 0, the alternatives in descending order, the chosen token first at temperature 0),
`response_format` `json_object` (the answer parses) and `json_schema` with `strict` (the
answer parses and has the schema's keys and types), `logit_bias` banning the token the model
would otherwise start with, `presence_penalty` / `frequency_penalty`. Usage is exact: the
completion tokens equal the logprob entries the answer carries (one per generated token), the
streamed answer's usage chunk (`stream_options.include_usage`) says what the whole one says
for the same prompt, and total = prompt + completion.

The token id for `logit_bias` is read from the model's GGUF vocabulary (GGUF_PATH): the SDK
reports tokens as text and bytes, never as ids.

usage: features.py BASE_URL MODEL GGUF_PATH
"""

import json
import math
import struct
import sys

from openai import OpenAI

base, model, gguf = sys.argv[1], sys.argv[2], sys.argv[3]
client = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
user = [{"role": "user", "content": "Name three colours."}]


def gguf_tokens(path):
    """The `tokenizer.ggml.tokens` array of a GGUF file (the vocabulary, by id)."""
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    with open(path, "rb") as f:
        magic, _version, _tensors, kvs = struct.unpack("<4sIQQ", f.read(24))
        assert magic == b"GGUF", magic

        def string():
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(n).decode("utf-8", "replace")

        def skip(t):
            if t == 8:
                string()
            elif t == 9:
                et, n = struct.unpack("<IQ", f.read(12))
                for _ in range(n):
                    skip(et)
            else:
                f.seek(sizes[t], 1)

        for _ in range(kvs):
            key = string()
            (t,) = struct.unpack("<I", f.read(4))
            if key == "tokenizer.ggml.tokens":
                et, n = struct.unpack("<IQ", f.read(12))
                assert (t, et) == (9, 8), (t, et)
                return [string() for _ in range(n)]
            skip(t)
    raise AssertionError("no tokenizer.ggml.tokens in " + path)


def bpe_text(raw):
    """GPT-2 byte-level BPE spelling of token bytes (how the GGUF vocabulary writes them)."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return "".join(table[b] for b in raw)


def check_usage(u, completion=None):
    assert u.prompt_tokens > 0 and u.completion_tokens > 0, u
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens, u
    if completion is not None:
        assert u.completion_tokens == completion, (u, completion)


def check_top(entry):
    """One token's logprob entry (chat form): ≤ 0, alternatives descending, sum of p ≤ 1."""
    assert entry.logprob <= 0, entry
    tops = [t.logprob for t in entry.top_logprobs]
    assert tops == sorted(tops, reverse=True), entry
    assert all(t <= 0 for t in tops), entry
    assert sum(math.exp(t) for t in tops) <= 1.0 + 1e-3, entry


def stream_chat(**kw):
    """A streamed chat completion, gathered: per choice (text, logprob entries, finish) and
    the usage chunk."""
    texts, lps, finish, usage, chunks = {}, {}, {}, None, 0
    for c in client.chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **kw
    ):
        chunks += 1
        if c.usage is not None:
            assert not c.choices, c
            usage = c.usage
        for ch in c.choices:
            texts[ch.index] = texts.get(ch.index, "") + (ch.delta.content or "")
            if ch.logprobs and ch.logprobs.content:
                lps.setdefault(ch.index, []).extend(ch.logprobs.content)
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
    assert usage is not None, "no usage chunk"
    return texts, lps, finish, usage, chunks


# n = 2 with logprobs: two choices, one logprob entry per generated token, usage the sum.
ask = dict(model=model, messages=user, n=2, max_tokens=12, seed=5, temperature=0.9,
           logprobs=True, top_logprobs=3)
whole = client.chat.completions.create(**ask)
assert [c.index for c in whole.choices] == [0, 1], whole
for c in whole.choices:
    assert c.message.content, c
    assert c.finish_reason in ("stop", "length"), c
    for e in c.logprobs.content:
        check_top(e)
check_usage(whole.usage, sum(len(c.logprobs.content) for c in whole.choices))
texts, lps, finish, usage, chunks = stream_chat(**ask)
assert sorted(texts) == [0, 1] and sorted(finish) == [0, 1], (texts, finish)
for i in (0, 1):
    assert texts[i], texts
    assert "".join(e.token for e in lps[i]) == texts[i], (lps[i], texts[i])
    for e in lps[i]:
        check_top(e)
check_usage(usage, len(lps[0]) + len(lps[1]))
assert usage.prompt_tokens == whole.usage.prompt_tokens, (usage, whole.usage)
assert chunks > 3, chunks

# Greedy: the chosen token is the most likely one, whole and streamed alike.
greedy = dict(model=model, messages=user, max_tokens=8, temperature=0, logprobs=True,
              top_logprobs=2)
g = client.chat.completions.create(**greedy)
for e in g.choices[0].logprobs.content:
    check_top(e)
    assert e.top_logprobs[0].token == e.token, e
    assert abs(e.top_logprobs[0].logprob - e.logprob) < 1e-4, e
check_usage(g.usage, len(g.choices[0].logprobs.content))
texts, lps, _, usage, _ = stream_chat(**greedy)
assert texts[0] == g.choices[0].message.content, (texts, g)
check_usage(usage, len(lps[0]))
assert usage == g.usage, (usage, g.usage)

# Legacy completions with logprobs=2: tokens, their logprobs and the top-2 alternatives.
leg = dict(model=model, prompt="The colours of the rainbow are", max_tokens=8, temperature=0,
           logprobs=2)
lc = client.completions.create(**leg)
lp = lc.choices[0].logprobs
assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs), lp
assert "".join(lp.tokens) == lc.choices[0].text, (lp, lc)
for tok, lpv, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
    assert lpv <= 0 and len(top) == 2, (tok, lpv, top)
    vals = list(top.values())
    assert vals == sorted(vals, reverse=True) and all(v <= 0 for v in vals), top
    assert max(top, key=top.get) == tok, (tok, top)
check_usage(lc.usage, len(lp.tokens))
stream_text, stream_tokens, usage = "", [], None
for c in client.completions.create(stream=True, stream_options={"include_usage": True}, **leg):
    if c.usage is not None:
        usage = c.usage
    for ch in c.choices:
        stream_text += ch.text
        if ch.logprobs:
            stream_tokens.extend(ch.logprobs.tokens)
assert stream_text == lc.choices[0].text and stream_tokens == lp.tokens, (stream_text, lc)
assert usage == lc.usage, (usage, lc.usage)

# json_object: the answer parses as a JSON object.
jo = dict(model=model, max_tokens=60, temperature=0,
          messages=[{"role": "user", "content":
                     'Give the capital of France as a JSON object with the key "capital".'}],
          response_format={"type": "json_object"})
r = client.chat.completions.create(**jo)
assert r.choices[0].finish_reason == "stop", r
assert isinstance(json.loads(r.choices[0].message.content), dict), r
check_usage(r.usage)
texts, _, finish, usage, _ = stream_chat(**jo)
assert finish[0] == "stop" and isinstance(json.loads(texts[0]), dict), texts
assert usage == r.usage, (usage, r.usage)

# json_schema, strict: required keys with their types, nothing else.
schema = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer"},
        "pet": {"type": "boolean"},
        "colours": {"type": "array", "items": {"enum": ["red", "green", "blue"]},
                    "minItems": 1, "maxItems": 3},
    },
    "required": ["name", "age", "pet", "colours"],
    "additionalProperties": False,
}
js = dict(model=model, max_tokens=200, temperature=0,
          messages=[{"role": "user", "content": "Describe a person as JSON."}],
          response_format={"type": "json_schema",
                           "json_schema": {"name": "person", "strict": True, "schema": schema}})


def check_person(text):
    v = json.loads(text)
    assert sorted(v) == sorted(schema["required"]), v
    assert isinstance(v["name"], str) and len(v["name"]) <= 24, v
    assert isinstance(v["age"], int) and not isinstance(v["age"], bool), v
    assert isinstance(v["pet"], bool), v
    assert 1 <= len(v["colours"]) <= 3, v
    assert all(c in ("red", "green", "blue") for c in v["colours"]), v


r = client.chat.completions.create(**js)
assert r.choices[0].finish_reason == "stop", r
check_person(r.choices[0].message.content)
check_usage(r.usage)
texts, _, finish, usage, _ = stream_chat(**js)
assert finish[0] == "stop", (texts, finish)
check_person(texts[0])
assert usage == r.usage, (usage, r.usage)

# logit_bias: ban the token the greedy answer starts with; it then never appears.
vocab = gguf_tokens(gguf)
first = g.choices[0].logprobs.content[0]
banned = vocab.index(bpe_text(bytes(first.bytes)))
biased = dict(greedy, logit_bias={str(banned): -100})
b = client.chat.completions.create(**biased)
got = [e.token for e in b.choices[0].logprobs.content]
assert first.token not in got, (first.token, got)
for e in b.choices[0].logprobs.content:
    assert all(t.token != first.token for t in e.top_logprobs), e
check_usage(b.usage, len(got))
texts, lps, _, usage, _ = stream_chat(**biased)
assert first.token not in [e.token for e in lps[0]], (first.token, texts)
assert usage == b.usage, (usage, b.usage)

# presence / frequency penalties: accepted, streamed and whole, usage exact.
pen = dict(model=model, messages=user, max_tokens=16, temperature=0, logprobs=True,
           presence_penalty=1.5, frequency_penalty=1.0)
p = client.chat.completions.create(**pen)
assert p.choices[0].message.content, p
check_usage(p.usage, len(p.choices[0].logprobs.content))
texts, lps, _, usage, _ = stream_chat(**pen)
assert texts[0] == p.choices[0].message.content, (texts, p)
assert usage == p.usage, (usage, p.usage)

print("features: n=2", whole.usage.completion_tokens, "tokens; banned token", banned,
      repr(first.token), "; json_schema", r.usage.completion_tokens, "tokens")
