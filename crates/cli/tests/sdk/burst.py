"""Bursts through the official openai SDK (issue 21 §3), with `AsyncOpenAI` and
`asyncio.gather`: COUNT requests at once, half streamed, short answers.

- `all`: every request succeeds (the proxy queues what its worker cannot take at once).
- `overflow` (a `cocoon up` whose proxy has a tiny queue): with `max_retries=0` the requests
  the queue cannot hold get `openai.RateLimitError` (429) with a `Retry-After` header and
  every other one succeeds; then the same burst with the SDK's own retries, which wait as
  `Retry-After` says, succeeds entirely (`max_retries=6`: the SDK's default of two covers
  20 s of waiting at the proxy's 10 s hint, less than 16 answers take on a loaded 2-core
  machine).

Prints one line: what succeeded, what was refused and the longest `Retry-After`.

usage: burst.py BASE_URL MODEL all|overflow COUNT
"""

import asyncio
import sys
import time

import openai
from openai import AsyncOpenAI

base, model, mode, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])


async def one(client, i):
    """One request; its text (whole, or the streamed pieces joined) and usage."""
    ask = dict(model=model, messages=[{"role": "user", "content": "Say hi."}], max_tokens=4,
               extra_body={"timeout": 600})
    if i % 2 == 0:
        text, usage = "", None
        stream = await client.chat.completions.create(
            stream=True, stream_options={"include_usage": True}, **ask
        )
        async for c in stream:
            if c.usage is not None:
                usage = c.usage
            for ch in c.choices:
                text += ch.delta.content or ""
        return text, usage
    r = await client.chat.completions.create(**ask)
    return r.choices[0].message.content, r.usage


def succeeded(r):
    text, usage = r
    assert text is not None and usage is not None, r
    assert 0 < usage.completion_tokens <= 4, usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, usage
    return True


async def burst(max_retries):
    async with AsyncOpenAI(base_url=base + "/v1", api_key="unused",
                           max_retries=max_retries) as client:
        return await asyncio.gather(*(one(client, i) for i in range(count)),
                                    return_exceptions=True)


t = time.monotonic()
if mode == "all":
    results = asyncio.run(burst(0))
    failed = [r for r in results if isinstance(r, BaseException)]
    assert not failed, failed[:3]
    assert all(succeeded(r) for r in results)
    print(f"burst: {count} of {count} succeeded in {time.monotonic() - t:.1f} s")
elif mode == "overflow":
    results = asyncio.run(burst(0))
    ok = [r for r in results if not isinstance(r, BaseException)]
    limited = [r for r in results if isinstance(r, openai.RateLimitError)]
    other = [r for r in results
             if isinstance(r, BaseException) and not isinstance(r, openai.RateLimitError)]
    assert not other, other[:3]
    assert ok and limited, (len(ok), len(limited))
    assert all(succeeded(r) for r in ok)
    waits = []
    for e in limited:
        assert e.status_code == 429 and e.type == "rate_limit_error", e.body
        after = e.response.headers.get("retry-after")
        assert after is not None and after.isdigit() and 1 <= int(after) <= 60, dict(
            e.response.headers)
        waits.append(int(after))
    first = time.monotonic() - t
    # The SDK's own retries, waiting as Retry-After says: all succeed.
    t = time.monotonic()
    results = asyncio.run(burst(6))
    failed = [r for r in results if isinstance(r, BaseException)]
    assert not failed, failed[:3]
    assert all(succeeded(r) for r in results)
    print(f"burst: max_retries=0: {len(ok)} succeeded, {len(limited)} got 429 "
          f"(Retry-After {min(waits)}-{max(waits)} s) in {first:.1f} s; SDK retries: "
          f"{count} of {count} succeeded in {time.monotonic() - t:.1f} s")
else:
    raise SystemExit("mode is all or overflow")
