"""The official openai SDK's embeddings against a running Cocoon client (issue 21 §4).

`client.embeddings.create` with a list of inputs as floats and as base64 (which the SDK asks
for by default and decodes itself), the same vectors both ways, L2-normalised, in input
order; token-id input; usage as OpenAI reports it (prompt tokens only) and billed so (the
cost fields carry no completion cost, and the billing headers agree with them); the 400s
for an empty input and unsupported `dimensions`; the model's capabilities in /v1/models
(an embedding model: embeddings, no chat); chat to it and embeddings of the chat model are
400s naming `model`. Prints one JSON line: the requests made and the tokens and nanoTON they
were billed.

usage: embeddings.py BASE_URL MODEL CHAT_MODEL DIMENSIONS
"""

import base64
import json
import math
import struct
import sys

import openai
from openai import OpenAI

base, model, chat_model, dims = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
client = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
texts = ["The cat sat on the mat.", "A cat was sitting on a rug.", "Tax filings are due in April."]
billed = {"requests": 0, "tokens": 0, "nanoton": 0, "prompt_tokens": 0}


def create(**kw):
    raw = client.embeddings.with_raw_response.create(model=model, **kw)
    r = raw.parse()
    u = r.usage
    assert u.prompt_tokens > 0 and u.total_tokens == u.prompt_tokens, u
    extra = u.model_extra or {}
    # COCOON's cost fields: all of it is prompt cost.
    assert extra.get("completion_total_cost") == 0, extra
    assert extra.get("prompt_total_cost") == extra.get("total_cost") > 0, extra
    assert int(raw.headers["x-cocoon-cost-nanoton"]) == extra["total_cost"], dict(raw.headers)
    billed["requests"] += 1
    billed["tokens"] += int(raw.headers["x-cocoon-tokens"])
    billed["nanoton"] += int(raw.headers["x-cocoon-cost-nanoton"])
    billed["prompt_tokens"] += u.prompt_tokens
    return r


def check(r, n):
    assert r.object == "list" and r.model == model, r
    assert [d.index for d in r.data] == list(range(n)), r.data
    for d in r.data:
        assert d.object == "embedding"
        assert len(d.embedding) == dims, len(d.embedding)
        norm = math.sqrt(sum(x * x for x in d.embedding))
        assert abs(norm - 1) < 1e-4, norm
    return [d.embedding for d in r.data]


# The SDK's default: it asks for base64 and decodes it to floats itself.
default = check(create(input=texts), 3)
floats = check(create(input=texts, encoding_format="float"), 3)
for a, b in zip(default, floats):
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-6
# base64 asked for explicitly: the SDK hands the string over; little-endian f32s.
raw64 = create(input=texts[:1], encoding_format="base64").data[0].embedding
assert isinstance(raw64, str), type(raw64)
decoded = struct.unpack("<%df" % (len(base64.b64decode(raw64)) // 4), base64.b64decode(raw64))
assert len(decoded) == len(floats[0])
assert max(abs(x - y) for x, y in zip(decoded, floats[0])) < 1e-6


def cos(a, b):
    return sum(x * y for x, y in zip(a, b))


assert cos(floats[0], floats[1]) > cos(floats[0], floats[2]) + 0.3, "similar closer than unrelated"
assert cos(floats[0], floats[1]) < 0.999
# One string, and token ids.
one = check(create(input=texts[2], encoding_format="float"), 1)[0]
assert cos(one, floats[2]) > 0.9999
ids = check(create(input=[[1, 2, 3, 4], [5, 6, 7]], encoding_format="float"), 2)

# A big batch as floats (about 2.5 MB of JSON): whole, in order, through proxy and client.
big = ["sentence number %d" % i for i in range(400)]
vs = check(create(input=big, encoding_format="float"), 400)
# Alone it is the same vector, up to the rounding of llama.cpp's bigger-batch kernels (a
# cosine of 0.9998 was measured for a batch of 16 against 1).
assert cos(vs[7], check(create(input=big[7], encoding_format="float"), 1)[0]) > 0.999

# OpenAI's 400s, each naming its parameter; billed nothing.
for kw, param in [
    (dict(input=""), "input"),
    (dict(input=[]), "input"),
    (dict(input="x", dimensions=7), "dimensions"),
]:
    try:
        client.embeddings.create(model=model, **kw)
        raise AssertionError("accepted %r" % (kw,))
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.body.get("param") == param, (kw, e.body)

m = client.models.retrieve(model).to_dict()
caps = m["capabilities"]
assert caps["embeddings"] is True and caps["chat"] is False, m
# Each model does only what it serves: a 400 naming the model, billed nothing.
for call in [
    lambda: client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    ),
    lambda: client.embeddings.create(model=chat_model, input="x"),
]:
    try:
        call()
        raise AssertionError("accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.body.get("param") == "model", e.body
print(json.dumps(billed))
