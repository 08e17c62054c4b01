"""The official openai SDK against a running Cocoon client (issue 20 §3).

Every answer, whole and streamed, names its receipt in the `X-Cocoon-Receipt` header, which
the SDK's raw response exposes; `GET /v1/receipts/{id}` serves the receipt document. Writes
each answer's body as received and its receipt into OUT_DIR for `cocoon receipt verify`.

usage: receipts.py BASE_URL MODEL OUT_DIR
"""

import json
import pathlib
import sys
import urllib.request

from openai import OpenAI

base, model, out = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
client = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
messages = [{"role": "user", "content": "Say hello."}]


def receipt(rid):
    with urllib.request.urlopen(f"{base}/v1/receipts/{rid}") as r:
        doc = json.load(r)
    assert doc["object"] == "cocoon.receipt", doc
    assert doc["id"] == rid, doc
    assert doc["model"].split("@")[0] == model.split("@")[0], doc
    return doc


raw = client.chat.completions.with_raw_response.create(
    model=model, messages=messages, max_tokens=12
)
rid = raw.headers.get("x-cocoon-receipt")
assert rid and len(rid) == 64, dict(raw.headers)
completion = raw.parse()
assert completion.choices[0].message.content, completion
(out / "whole.bin").write_bytes(raw.http_response.content)
(out / "whole.json").write_text(json.dumps(receipt(rid)))

with client.chat.completions.with_streaming_response.create(
    model=model, messages=messages, max_tokens=12, stream=True
) as resp:
    sid = resp.headers.get("x-cocoon-receipt")
    body = b"".join(resp.iter_bytes())
assert sid and len(sid) == 64 and sid != rid, sid
assert body.rstrip().endswith(b"data: [DONE]"), body[-200:]
(out / "stream.bin").write_bytes(body)
(out / "stream.json").write_text(json.dumps(receipt(sid)))
print("receipts", rid, sid)
